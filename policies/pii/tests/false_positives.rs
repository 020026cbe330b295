//! Ordinary text must scan clean.

mod support;

/// Sentences that contain nothing personal or secret.
const CORPUS: &[&str] = &[
    // Versions.
    "Released version 1.2.3 today.",
    "Upgrade to v2.10.4 and then 3.0.0-rc.1.",
    "Build 1.2.3.4 passed all checks.",
    "The firmware version is 4.3.2.1 on every unit.",
    "Install it with pip install package==1.2.3.4",
    "npm i left-pad@1.2.3.4 --save",
    "Bumped to 2.0.1.7 after the fix.",
    "Windows build 10.0.19041.1 is required.",
    "Chrome 120.0.6099.109 shipped the patch.",
    "Apple released iOS 17.4.1 yesterday.",
    "Semver 1.2.3.4-beta and 1.2.3.4+build5 are pre-releases.",
    // Numbers that fail their validators or have no context.
    "Order #4829301 shipped on 2024-03-15.",
    "Invoice 2024-00123 totals $1,299.99.",
    "Tracking number 1Z999AA10123456784 is in transit.",
    "The room holds 150 people across 3 floors.",
    "Population grew from 1,234,567 to 2,345,678.",
    "Random numbers 1234567890123456 and 4111111111111112 fail Luhn.",
    "Serials 123-45-0000, 000-12-3456 and 666-01-2345 are invalid SSNs.",
    "The digits 123456789 alone mean nothing.",
    "Batch 9434765919 was processed.",
    "ISBN 978-3-16-148410-0 is a book.",
    "Cost center 555-1234 approved it.",
    "Reference 20231015-4471-0093 closed.",
    "Dimensions are 1920x1080 at 60 Hz.",
    "HTTP 200 OK on port 8080, pid 12345.",
    "Latency p99 was 123 ms over 4567 requests.",
    "Pi is 3.14159 and e is 2.71828.",
    "Coordinates 40.7128, -74.0060 in decimal degrees.",
    "Price: $19.99, qty 3, total $59.97.",
    "Temperature reached 98.6F at 14:05.",
    "The answer is 42.",
    "Chapter 12 covers sections 4.2.1 through 4.2.9.",
    // Dates and times.
    "Meeting at 10:30 on 2024-05-06T10:30:00Z.",
    "Dates: 03/15/2024, 15.03.2024 and 2024/03/15.",
    "Timestamp 2024-06-01T12:00:00.123+02:00 recorded.",
    "Runtime 01:02:03 and ratio 16:9.",
    // Hashes, ids, encodings.
    "Commit 3f2a9c1d7b8e4f60a1b2c3d4e5f60718293a4b5c fixed it.",
    "git sha 9fceb02 and tag v1.4.2.",
    "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "md5 d41d8cd98f00b204e9800998ecf8427e of the empty string.",
    "Request id 123e4567-e89b-12d3-a456-426614174000 failed.",
    "UUID 550e8400-e29b-41d4-a716-446655440000 assigned.",
    "Base64 SGVsbG8gV29ybGQ= decodes to a greeting.",
    "Error code E1234 at line 56.",
    "See RFC 6901 and ISO 8601.",
    "Flight UA 123 departs from gate B12.",
    // Code and prose that resemble secrets.
    "Use the key-value store for sessions.",
    "The key-management-service rotates keys.",
    "Tokens used: 1234, max_tokens=4096.",
    "the token expires in 3600 seconds",
    "Reset your password: click the link below.",
    "The password is stored securely.",
    "password: ********",
    "password = ${DB_PASSWORD}",
    "secret: I love cats",
    "api_key: your-api-key-here",
    "We use sk-learn and scikit-learn.",
    "Set token_type to bearer.",
    "Basic usage of the CLI is documented.",
    "Authorization: Bearer <token>",
    // Names and addresses that are not.
    "Mr. and Mrs. are titles.",
    "Dr. strangelove is a film title in lowercase here.",
    "We sold 5 New Features this quarter.",
    "Top 10 Tips for better sleep.",
    "Released 3 major updates.",
    // Network-looking text.
    "Contact support@ for help.",
    "The file icon@2x.png is missing.",
    "Use std::vector and Foo::bar in C++.",
    "MAC 00:1A:2B:3C:4D:5E is not an IP.",
    "Email is user at example dot com.",
    "Visit https://example.com/docs?page=2 for details.",
    "Connect to postgres://db.internal:5432/app without credentials.",
    "Markers [REDACTED:email] and [HASH:phone:0123456789abcdef] are safe.",
    "",
    "    ",
    "naïve café résumé — 東京 🚀",
];

#[test]
fn corpus_is_clean() {
    let mut failures = Vec::new();
    for text in CORPUS {
        let f = support::found(text);
        if !f.is_empty() {
            failures.push(format!("{text:?}: {f:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "false positives:\n{}",
        failures.join("\n")
    );
    assert!(CORPUS.len() >= 70);
}

#[test]
fn corpus_as_one_message_is_clean_and_not_blocked() {
    use agentfed_guest::pii::TrustLevel;
    let values: Vec<(&str, &str)> = CORPUS.iter().map(|t| ("/items/0/note", *t)).collect();
    let r = support::scan(&values, TrustLevel::Untrusted);
    assert!(r.detections.is_empty(), "{:?}", r.detections);
    assert!(!r.blocked);
    assert!(r.rewritten.is_empty());
}

#[test]
fn ordinary_fields_are_clean() {
    use agentfed_guest::pii::TrustLevel;
    let r = support::scan(
        &[
            ("/usage/max_tokens", "4096"),
            ("/usage/next_token", "eyJwYWdlIjoyfQ"),
            ("/model/eos_token", "</s>"),
            ("/task/title", "Summarise the Q3 report"),
            ("/key", "user-settings"),
            ("/token_type", "Bearer"),
            ("/password_hint", "your first pet"),
        ],
        TrustLevel::Untrusted,
    );
    assert!(r.detections.is_empty(), "{:?}", r.detections);
}
