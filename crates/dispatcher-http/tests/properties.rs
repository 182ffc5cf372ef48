//! Property tests for request parsing: no panic on any Authorization header or cursor.

use dispatcher_http::auth::parse_basic;
use dispatcher_http::cursor;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn basic_auth_parsing_never_panics(h in ".{0,300}") {
        let _ = parse_basic(&h);
        let _ = parse_basic(&format!("Basic {h}"));
    }

    #[test]
    fn basic_auth_round_trips(user in "[^:\\p{Cc}]{0,40}", pass in "[^\\p{Cc}]{0,40}") {
        use base64::Engine;
        let h = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")));
        prop_assert_eq!(parse_basic(&h), Some((user, pass)));
    }

    #[test]
    fn cursors_never_panic_and_round_trip(s in ".{0,120}", micros in 0i64..4_000_000_000_000_000, id in any::<u128>()) {
        let _ = cursor::decode(&s);
        let ts = chrono::DateTime::from_timestamp_micros(micros).unwrap();
        let id = uuid::Uuid::from_u128(id);
        prop_assert_eq!(cursor::decode(&cursor::encode(ts, id)).unwrap(), (ts, id));
        let _ = cursor::limit(Some(micros));
    }
}
