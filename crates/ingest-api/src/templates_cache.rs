//! Templates never change after creation, so the ingest keeps the ones it has read.

use dispatcher_core::TemplateFormat;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use uuid::Uuid;

const MAX: usize = 10_000;

/// A template's format and body.
pub type Cached = Arc<(TemplateFormat, String)>;

#[derive(Default)]
pub struct TemplateCache {
    map: RwLock<HashMap<(Uuid, Uuid), Cached>>,
}

impl TemplateCache {
    pub fn get(&self, account: Uuid, id: Uuid) -> Option<Cached> {
        self.map
            .read()
            .expect("template cache")
            .get(&(account, id))
            .cloned()
    }

    pub fn put(
        &self,
        account: Uuid,
        id: Uuid,
        format: TemplateFormat,
        body: String,
    ) -> Arc<(TemplateFormat, String)> {
        let v = Arc::new((format, body));
        let mut map = self.map.write().expect("template cache");
        if map.len() >= MAX {
            map.clear();
        }
        map.insert((account, id), v.clone());
        v
    }
}
