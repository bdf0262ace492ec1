//! Unit tests of the verifier: the schemes' published test vectors,
//! tampering, timestamps, rotation, the candidate cap and bad settings.

use super::*;
use hyper::header::{HeaderName, HeaderValue};

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

const STANDARD_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const STANDARD_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;

fn standard_headers(signature: &str) -> HeaderMap {
    headers(&[
        ("webhook-id", "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk"),
        ("webhook-timestamp", "1649367553"),
        ("webhook-signature", signature),
    ])
}

#[test]
fn standard_webhooks_test_vector_verifies() {
    let verifier = Verifier::new(Scheme::StandardWebhooks, &[STANDARD_SECRET], None).unwrap();
    let good = standard_headers("v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    assert_eq!(verifier.verify(&good, STANDARD_BODY, 1_649_367_553), Ok(()));
    // Several entries: any one matching passes.
    let several = standard_headers("v1,AAAA v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    assert_eq!(
        verifier.verify(&several, STANDARD_BODY, 1_649_367_600),
        Ok(())
    );
}

#[test]
fn standard_webhooks_refuses_tampering_old_timestamps_and_missing_headers() {
    let verifier = Verifier::new(Scheme::StandardWebhooks, &[STANDARD_SECRET], None).unwrap();
    let good = standard_headers("v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    let tampered = br#"{"email":"test@example.com","username":"test_usex"}"#;
    assert!(verifier.verify(&good, tampered, 1_649_367_553).is_err());
    assert!(
        verifier
            .verify(&good, STANDARD_BODY, 1_649_367_553 + 301)
            .is_err()
    );
    assert!(
        verifier
            .verify(&good, STANDARD_BODY, 1_649_367_553 - 301)
            .is_err()
    );
    assert!(
        verifier
            .verify(&HeaderMap::new(), STANDARD_BODY, 1_649_367_553)
            .is_err()
    );
    let other = Verifier::new(Scheme::StandardWebhooks, &["whsec_c2VjcmV0"], None).unwrap();
    assert!(other.verify(&good, STANDARD_BODY, 1_649_367_553).is_err());
}

fn svix_headers(signature: &str) -> HeaderMap {
    headers(&[
        ("svix-id", "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk"),
        ("svix-timestamp", "1649367553"),
        ("svix-signature", signature),
    ])
}

const STANDARD_GOOD: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

#[test]
fn svix_header_names_verify_too() {
    let verifier = Verifier::new(Scheme::StandardWebhooks, &[STANDARD_SECRET], None).unwrap();
    assert_eq!(
        verifier.verify(&svix_headers(STANDARD_GOOD), STANDARD_BODY, 1_649_367_553),
        Ok(())
    );
    let tampered = br#"{"email":"test@example.com","username":"test_usex"}"#;
    assert!(
        verifier
            .verify(&svix_headers(STANDARD_GOOD), tampered, 1_649_367_553)
            .is_err()
    );
}

#[test]
fn a_request_with_both_header_sets_is_checked_by_the_webhook_set() {
    let verifier = Verifier::new(Scheme::StandardWebhooks, &[STANDARD_SECRET], None).unwrap();
    let mut both = svix_headers("v1,AAAA");
    both.extend(standard_headers(STANDARD_GOOD));
    assert_eq!(verifier.verify(&both, STANDARD_BODY, 1_649_367_553), Ok(()));
    let mut both = svix_headers(STANDARD_GOOD);
    both.extend(standard_headers("v1,AAAA"));
    assert!(
        verifier
            .verify(&both, STANDARD_BODY, 1_649_367_553)
            .is_err()
    );
    // The sets are not mixed: one webhook-* header makes the request use
    // webhook-*, and the others are then missing.
    let mut mixed = svix_headers(STANDARD_GOOD);
    mixed.insert(
        "webhook-id",
        HeaderValue::from_static("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk"),
    );
    assert_eq!(
        verifier.verify(&mixed, STANDARD_BODY, 1_649_367_553),
        Err(Rejection("a signature header is missing"))
    );
}

#[test]
fn more_signatures_than_the_cap_are_refused_before_any_mac() {
    let verifier = Verifier::new(Scheme::StandardWebhooks, &[STANDARD_SECRET], None).unwrap();
    let at_cap = format!("{}{STANDARD_GOOD}", "v1,AAAA ".repeat(MAX_SIGNATURES - 1));
    assert_eq!(
        verifier.verify(&standard_headers(&at_cap), STANDARD_BODY, 1_649_367_553),
        Ok(())
    );
    let over = format!("{}{STANDARD_GOOD}", "v1,AAAA ".repeat(MAX_SIGNATURES));
    let refused = verifier
        .verify(&standard_headers(&over), STANDARD_BODY, 1_649_367_553)
        .unwrap_err();
    assert!(
        refused.0.contains(&format!("more than {MAX_SIGNATURES}")),
        "{refused}"
    );
    // Entries of other versions are not candidates and do not count.
    let others = format!("{}{STANDARD_GOOD}", "v1a,AAAA ".repeat(MAX_SIGNATURES));
    assert_eq!(
        verifier.verify(&standard_headers(&others), STANDARD_BODY, 1_649_367_553),
        Ok(())
    );
    let stripe = Verifier::new(Scheme::Stripe, &["s"], None).unwrap();
    let header = format!("t=1700000000{}", ",v1=".repeat(MAX_SIGNATURES + 1));
    let refused = stripe
        .verify(
            &headers(&[("stripe-signature", &header)]),
            b"{}",
            1_700_000_000,
        )
        .unwrap_err();
    assert!(refused.0.contains("more than"), "{refused}");
}

#[test]
fn signatures_of_the_wrong_length_never_match() {
    let verifier = Verifier::new(Scheme::StandardWebhooks, &[STANDARD_SECRET], None).unwrap();
    // The right tag with a byte more or less, still valid base64.
    let tag = BASE64.decode(&STANDARD_GOOD[3..]).unwrap();
    for wrong in [&tag[..31], &[&tag[..], &[0]].concat()[..]] {
        let entry = format!("v1,{}", BASE64.encode(wrong));
        assert!(
            verifier
                .verify(&standard_headers(&entry), STANDARD_BODY, 1_649_367_553)
                .is_err()
        );
    }
    let tags = verifier.tags(&[b"x"]);
    assert!(!matches_any(&tags, &[]));
    assert!(matches_any(&tags, &tags[0].clone().into_bytes()));
}

#[test]
fn a_second_secret_allows_rotation() {
    let verifier = Verifier::new(
        Scheme::StandardWebhooks,
        &["whsec_c2VjcmV0", STANDARD_SECRET],
        None,
    )
    .unwrap();
    let good = standard_headers("v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    assert_eq!(verifier.verify(&good, STANDARD_BODY, 1_649_367_553), Ok(()));
}

fn hex_hmac(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).unwrap();
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

#[test]
fn stripe_signatures_verify_with_the_raw_secret() {
    let secret = "whsec_stripe_test_secret";
    let verifier = Verifier::new(Scheme::Stripe, &[secret], None).unwrap();
    let body = br#"{"id":"evt_1"}"#;
    let good = hex_hmac(secret.as_bytes(), &[b"1700000000", b".", body]);
    let header = format!("t=1700000000,v1=deadbeef,v1={good}");
    let map = headers(&[("stripe-signature", &header)]);
    assert_eq!(verifier.verify(&map, body, 1_700_000_100), Ok(()));
    assert!(verifier.verify(&map, b"{}", 1_700_000_100).is_err());
    assert!(verifier.verify(&map, body, 1_700_000_400).is_err());
}

#[test]
fn plain_hmac_reads_the_configured_header() {
    let verifier =
        Verifier::new(Scheme::HmacSha256, &["razor"], Some("X-Razorpay-Signature")).unwrap();
    let body = b"{\"a\":1}";
    let good = hex_hmac(b"razor", &[body]);
    let map = headers(&[("x-razorpay-signature", &good)]);
    assert_eq!(verifier.verify(&map, body, 0), Ok(()));
    assert!(verifier.verify(&map, b"{\"a\":2}", 0).is_err());
    assert!(Verifier::new(Scheme::HmacSha256, &["razor"], None).is_err());
}

#[test]
fn half_configurations_are_refused_naming_both_flags() {
    let file = Path::new("/nonexistent/secrets");
    let refused = |scheme, file, header| {
        Verifier::from_config(scheme, file, header)
            .unwrap_err()
            .to_string()
    };
    for (message, flags) in [
        (
            refused(None, Some(file), None),
            ["--signing-secrets-file", "--signature-scheme"],
        ),
        (
            refused(Some(Scheme::Stripe), None, None),
            ["--signature-scheme", "--signing-secrets-file"],
        ),
        (
            refused(Some(Scheme::HmacSha256), Some(file), None),
            ["--signature-scheme hmac-sha256", "--signature-header"],
        ),
        (
            refused(Some(Scheme::Stripe), Some(file), Some("X-Sig")),
            ["--signature-header", "--signature-scheme hmac-sha256"],
        ),
        (
            refused(None, None, Some("X-Sig")),
            ["--signature-header", "--signature-scheme"],
        ),
    ] {
        for flag in flags {
            assert!(message.contains(flag), "{message} should name {flag}");
        }
        // Refused on the flags alone: the file was never read.
        assert!(!message.contains("cannot read"), "{message}");
    }
    assert!(Verifier::from_config(None, None, None).unwrap().is_none());
}

#[test]
fn malformed_configuration_is_refused() {
    assert!(Verifier::new(Scheme::StandardWebhooks, &["not-whsec"], None).is_err());
    assert!(Verifier::new(Scheme::StandardWebhooks, &["whsec_!!!"], None).is_err());
    assert!(Verifier::new(Scheme::Stripe, &[], None).is_err());
    let debug = format!(
        "{:?}",
        Verifier::new(Scheme::Stripe, &["s3cret"], None).unwrap()
    );
    assert!(!debug.contains("s3cret"), "{debug}");
}
