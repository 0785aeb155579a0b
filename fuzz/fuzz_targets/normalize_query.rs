//! Query normalisation and target checks on arbitrary input: no panic, and normalising a
//! canonical query changes nothing.
#![no_main]

use http::{Method, Uri, Version};
use libfuzzer_sys::fuzz_target;
use prime_sigv4_proxy::prepare::{check_target, normalize_query};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(once) = normalize_query(text) {
        assert_eq!(normalize_query(&once).ok().as_deref(), Some(once.as_str()), "not idempotent for {text:?}");
        assert!(once.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~%=&".contains(&b)));
    }
    if let Ok(uri) = text.parse::<Uri>() {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let _ = check_target(&Method::GET, &uri, version);
        }
        let _ = normalize_query(uri.query().unwrap_or_default());
    }
});
