//! PDF rendering through the real helper process: limits that kill it, and slots that recover.

use dispatcher_core::TemplateFormat;
use dispatcher_render::{Limits, Renderer};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The tests here look at this process's helper children, so they start renderers one at a time.
static ONE_RENDERER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn limits() -> Limits {
    Limits {
        threads: 1,
        timeout: Duration::from_secs(2),
        helper: Some(env!("CARGO_BIN_EXE_dispatch-render").into()),
        ..Limits::default()
    }
}

async fn pdf(r: &Renderer, body: &str) -> Result<Vec<u8>, String> {
    tokio::time::timeout(
        Duration::from_secs(60),
        r.render(
            TemplateFormat::Pdf,
            Arc::from(body),
            Arc::new(json!({"n": 1})),
        ),
    )
    .await
    .expect("a render ends within its limit")
    .map(|d| d.bytes)
    .map_err(|e| e.message)
}

#[tokio::test]
async fn a_render_past_its_time_limit_is_killed_and_the_slot_recovers() {
    let _one = ONE_RENDERER_AT_A_TIME.lock().await;
    let r = Renderer::start(limits()).unwrap();
    let before = pdf(&r, "Receipt #data.n").await.unwrap();
    assert!(before.starts_with(b"%PDF-"));
    let started = std::time::Instant::now();
    let err = pdf(&r, "#for a in range(20000) { for b in range(20000) { } }")
        .await
        .unwrap_err();
    assert!(err.contains("limit of 2s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    // The single slot has a fresh helper: the same document, the same bytes.
    assert_eq!(pdf(&r, "Receipt #data.n").await.unwrap(), before);
}

#[tokio::test]
async fn a_document_larger_than_the_memory_cap_fails_and_the_slot_recovers() {
    let _one = ONE_RENDERER_AT_A_TIME.lock().await;
    let r = Renderer::start(Limits {
        max_memory_bytes: 256 * 1024 * 1024,
        timeout: Duration::from_secs(120),
        max_pages: usize::MAX,
        ..limits()
    })
    .unwrap();
    let err = pdf(&r, "#for i in range(200000) [#i #pagebreak()]")
        .await
        .unwrap_err();
    assert!(err.contains("memory"), "{err}");
    assert!(pdf(&r, "fine").await.unwrap().starts_with(b"%PDF-"));
}

#[tokio::test]
async fn typst_errors_come_back_from_the_helper_with_their_position() {
    let _one = ONE_RENDERER_AT_A_TIME.lock().await;
    let r = Renderer::start(limits()).unwrap();
    let err = pdf(&r, "a\nb\n#data.missing").await.unwrap_err();
    assert!(err.contains("missing") && err.contains("line 3"), "{err}");
    let err = pdf(&r, "#for i in range(600) [#i #pagebreak()]")
        .await
        .unwrap_err();
    assert!(err.contains("600 pages") || err.contains("pages"), "{err}");
}

#[tokio::test]
async fn a_missing_helper_is_a_clear_error_at_start() {
    let Err(e) = Renderer::start(Limits {
        helper: Some("/nonexistent/dispatch-render".into()),
        ..limits()
    }) else {
        panic!("started without a helper");
    };
    assert!(e.message.contains("does not exist"), "{}", e.message);
}

/// This process's live children (a helper of an earlier test may linger as a zombie until it is
/// reaped): the slot's helper.
fn helpers() -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{}/task", std::process::id()))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
                st.rsplit_once(") ")
                    .is_some_and(|(_, r)| !r.starts_with('Z'))
            })
        })
        .collect()
}

#[tokio::test]
async fn a_helper_that_died_while_idle_is_replaced_without_failing_the_next_render() {
    let _one = ONE_RENDERER_AT_A_TIME.lock().await;
    let r = Renderer::start(limits()).unwrap();
    let first = pdf(&r, "Receipt #data.n").await.unwrap();
    let pids = helpers();
    assert_eq!(pids.len(), 1, "one slot, one helper: {pids:?}");
    let killed = std::process::Command::new("kill")
        .args(["-9", &pids[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // Give the kernel a moment to take it down; the slot does not know yet.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pdf(&r, "Receipt #data.n").await.unwrap(), first);
    let now = helpers();
    assert_eq!(now.len(), 1);
    assert_ne!(now[0], pids[0], "a new helper");
}
