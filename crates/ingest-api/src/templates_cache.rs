//! Templates never change after creation, so the ingest keeps the ones it has read.
//!
//! Bounded by bytes (`ingest.template_cache_bytes`), not by entries: a body may be anything up to
//! 256 KiB, so a count says little about memory. Templates used often stay (TinyLFU admission); a
//! flood of one-off reads evicts only the coldest bodies, never the whole cache at once.

use dispatcher_core::TemplateFormat;
use moka::sync::Cache;
use std::sync::Arc;
use uuid::Uuid;

/// What an entry costs besides its body: the two ids, the `Arc` and `String` headers, and the
/// cache's own bookkeeping (hash table slot, access-order node).
const ENTRY_OVERHEAD: usize = 256;

/// A template's format and body.
pub type Cached = Arc<(TemplateFormat, String)>;

pub struct TemplateCache {
    cache: Cache<(Uuid, Uuid), Cached>,
}

impl TemplateCache {
    /// A cache holding about `max_bytes` of template bodies.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_: &(Uuid, Uuid), v: &Cached| weight(&v.1))
                .build(),
        }
    }

    pub fn get(&self, account: Uuid, id: Uuid) -> Option<Cached> {
        self.cache.get(&(account, id))
    }

    pub fn put(
        &self,
        account: Uuid,
        id: Uuid,
        format: TemplateFormat,
        body: String,
    ) -> Arc<(TemplateFormat, String)> {
        let v = Arc::new((format, body));
        self.cache.insert((account, id), v.clone());
        v
    }
}

fn weight(body: &str) -> u32 {
    u32::try_from(body.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: u64 = 1024 * 1024;

    #[test]
    fn far_more_than_the_budget_stays_under_it() {
        let cache = TemplateCache::new(BUDGET);
        let account = Uuid::new_v4();
        let body = "x".repeat(10 * 1024);
        // 64 MiB of bodies through a 1 MiB cache.
        for _ in 0..6400 {
            cache.put(account, Uuid::new_v4(), TemplateFormat::Text, body.clone());
        }
        cache.cache.run_pending_tasks();
        let size = cache.cache.weighted_size();
        assert!(size <= BUDGET, "{size} bytes held");
        assert!(size > BUDGET / 2, "the cache is used: {size} bytes held");
    }

    #[test]
    fn hot_templates_still_hit_through_a_flood() {
        let cache = TemplateCache::new(BUDGET);
        let account = Uuid::new_v4();
        let hot: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
        for id in &hot {
            cache.put(account, *id, TemplateFormat::Html, format!("<p>{id}</p>"));
        }
        let cold = "y".repeat(10 * 1024);
        for i in 0..6400 {
            for id in &hot {
                let t = cache.get(account, *id).expect("a hot template stays");
                assert_eq!(t.1, format!("<p>{id}</p>"));
            }
            cache.put(account, Uuid::new_v4(), TemplateFormat::Text, cold.clone());
            if i % 500 == 0 {
                cache.cache.run_pending_tasks();
            }
        }
        cache.cache.run_pending_tasks();
        assert!(cache.cache.weighted_size() <= BUDGET);
        for id in &hot {
            assert!(cache.get(account, *id).is_some());
        }
        // Another account's id is another key.
        assert!(cache.get(Uuid::new_v4(), hot[0]).is_none());
    }

    #[test]
    fn a_body_is_weighed_by_its_length() {
        assert_eq!(weight(""), ENTRY_OVERHEAD as u32);
        assert_eq!(weight(&"a".repeat(1000)), 1000 + ENTRY_OVERHEAD as u32);
    }
}
