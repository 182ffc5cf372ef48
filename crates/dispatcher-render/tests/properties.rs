//! Property tests: no template text or data makes either engine panic.

use dispatcher_core::TemplateFormat;
use dispatcher_render::{check_syntax, render_in_process, Limits};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn templates_never_panic(body in ".{0,200}", value in ".{0,50}") {
        let data = serde_json::json!({"x": value, "n": 1});
        for f in TemplateFormat::ALL {
            let _ = check_syntax(f, &body);
            let _ = render_in_process(f, &body, &data, &Limits::default());
        }
    }
}
