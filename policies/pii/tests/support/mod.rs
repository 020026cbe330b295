//! Helpers shared by the integration tests.
#![allow(dead_code)]

use agentfed_guest::pii::{Direction, ScanRequest, ScanResult, StringValue, TrustLevel};
use agentfed_policy_pii::{Finding, Policy};

/// A deterministic stand-in for the host's keyed hash (16 hex digits).
pub fn fake_hash(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

pub fn request(values: &[(&str, &str)], level: TrustLevel) -> ScanRequest {
    ScanRequest {
        direction: Direction::Outbound,
        peer_level: level,
        message_type: "task-assignment".into(),
        values: values
            .iter()
            .map(|(p, v)| StringValue {
                path: (*p).into(),
                value: (*v).into(),
            })
            .collect(),
    }
}

pub fn scan_with(policy: &Policy, values: &[(&str, &str)], level: TrustLevel) -> ScanResult {
    policy
        .scan(&request(values, level), &mut |s| fake_hash(s))
        .expect("scan succeeds")
}

pub fn scan(values: &[(&str, &str)], level: TrustLevel) -> ScanResult {
    scan_with(&Policy::default(), values, level)
}

/// Findings of the default scanner in `text` (path `/text`), as
/// `(type, matched text)`, deduplicated.
pub fn found(text: &str) -> Vec<(&'static str, String)> {
    let mut v: Vec<(&'static str, String)> = agentfed_policy_pii::detect("/text", text)
        .into_iter()
        .map(|f| (f.pii_type, text[f.start..f.end].to_string()))
        .collect();
    v.dedup();
    v
}

/// The resolved (non-overlapping) detections as `(type, matched text)`.
pub fn resolved(text: &str) -> Vec<(String, String)> {
    let r = scan(&[("/text", text)], TrustLevel::Untrusted);
    r.detections
        .iter()
        .map(|d| {
            (
                d.pii_type.to_string(),
                text[d.start as usize..d.end as usize].to_string(),
            )
        })
        .collect()
}

pub fn findings(path: &str, text: &str) -> Vec<Finding> {
    agentfed_policy_pii::detect(path, text)
}

/// Asserts that `text` has a finding of `ty` covering exactly `needle`.
#[track_caller]
pub fn assert_finds(text: &str, ty: &str, needle: &str) {
    let f = found(text);
    assert!(
        f.iter().any(|(t, s)| *t == ty && s == needle),
        "expected {ty} {needle:?} in {text:?}, found {f:?}"
    );
}

/// Asserts that `text` has no finding of type `ty`.
#[track_caller]
pub fn assert_no(text: &str, ty: &str) {
    let f = found(text);
    assert!(
        !f.iter().any(|(t, _)| *t == ty),
        "expected no {ty} in {text:?}, found {f:?}"
    );
}

/// A deterministic pseudo-random string of `n` characters from `alphabet`.
pub fn rnd(n: usize, alphabet: &str, seed: u64) -> String {
    let a: Vec<char> = alphabet.chars().collect();
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            a[((x >> 33) as usize) % a.len()]
        })
        .collect()
}

pub const ALNUM: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
pub const B64URL: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
pub const B64: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
pub const HEXL: &str = "0123456789abcdef";
pub const UPPER_B32: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
pub const LETTERS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
