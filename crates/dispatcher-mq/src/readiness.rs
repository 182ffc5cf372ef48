use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Whether each broker-facing task of a service currently holds a working connection. `/readyz`
/// reports ready only when every registered task is connected.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    parts: Arc<std::sync::Mutex<Vec<Part>>>,
}

/// A named task and whether it is connected.
type Part = (String, Arc<AtomicBool>);

impl Readiness {
    /// Registers a part (initially not connected) and returns its flag.
    pub fn register(&self, name: &str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.parts
            .lock()
            .expect("readiness lock")
            .push((name.to_owned(), flag.clone()));
        flag
    }

    /// Names of the parts that are not connected.
    pub fn not_ready(&self) -> Vec<String> {
        self.parts
            .lock()
            .expect("readiness lock")
            .iter()
            .filter(|(_, f)| !f.load(Ordering::Relaxed))
            .map(|(n, _)| n.clone())
            .collect()
    }
}
