//! Property tests: signature verification and URL policy never panic on any input, retries stay
//! on their schedule, and signing round-trips.

use dispatcher_core::netpolicy::{check_url, refused_reason};
use dispatcher_core::retry::{next_step, AttemptOutcome, NextStep};
use dispatcher_core::signing::{signature_header, verify_hex_sha256, WebhookSecret};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn verification_never_panics(
        id in ".{0,64}",
        ts in any::<i64>(),
        body in proptest::collection::vec(any::<u8>(), 0..512),
        header in ".{0,256}",
    ) {
        let secret = WebhookSecret::generate();
        let _ = secret.verify(&id, ts, &body, &header);
        let _ = verify_hex_sha256(b"k", &body, &header);
    }

    #[test]
    fn signatures_round_trip_and_bind_every_part(
        id in "[a-zA-Z0-9_]{1,40}",
        ts in 0i64..4_000_000_000,
        body in proptest::collection::vec(any::<u8>(), 0..512),
        flip in any::<usize>(),
    ) {
        let (a, b) = (WebhookSecret::generate(), WebhookSecret::generate());
        let header = signature_header(&[a.clone(), b.clone()], &id, ts, &body);
        prop_assert!(a.verify(&id, ts, &body, &header));
        prop_assert!(b.verify(&id, ts, &body, &header));
        prop_assert!(!a.verify(&id, ts + 1, &body, &header));
        if !body.is_empty() {
            let mut tampered = body.clone();
            let i = flip % tampered.len();
            tampered[i] ^= 0x01;
            prop_assert!(!a.verify(&id, ts, &tampered, &header));
        }
    }

    #[test]
    fn secret_parsing_never_panics(s in ".{0,128}") {
        if let Ok(secret) = WebhookSecret::parse(&s) {
            prop_assert_eq!(WebhookSecret::parse(&secret.expose()).unwrap(), secret);
        }
    }

    #[test]
    fn url_checks_never_panic(s in ".{0,200}", allow_http in any::<bool>()) {
        let _ = check_url(&s, allow_http, &[]);
        let _ = check_url(&format!("https://{s}"), allow_http, &[]);
    }

    #[test]
    fn mapped_v4_addresses_get_the_v4_verdict(a in any::<u32>()) {
        let v4 = Ipv4Addr::from(a);
        let mapped = IpAddr::V6(v4.to_ipv6_mapped());
        prop_assert_eq!(refused_reason(IpAddr::V4(v4)).is_some(), refused_reason(mapped).is_some());
        let _ = refused_reason(IpAddr::V6(Ipv6Addr::from(u128::from(a) << 64 | u128::from(a))));
    }

    #[test]
    fn retries_stay_on_schedule(
        attempt in 0u32..20,
        pick in any::<usize>(),
        retry_after in proptest::option::of(0u64..100_000),
    ) {
        let schedule = vec![Duration::from_secs(5), Duration::from_secs(30)];
        let outcome = AttemptOutcome::Failure { retry_after: retry_after.map(Duration::from_secs) };
        match next_step(attempt, &schedule, outcome, || pick) {
            NextStep::Retry { base, factor } => {
                prop_assert!(schedule.contains(&base));
                prop_assert!((0.8..=2.0).contains(&factor));
            }
            NextStep::Dead => prop_assert!(attempt as usize > schedule.len()),
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }
}
