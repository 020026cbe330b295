//! Each detector and validator, positive and negative.

mod support;

use agentfed_policy_pii::{types, validate};
use support::*;

// ---- payment cards -------------------------------------------------------

#[test]
fn cards_across_brands() {
    let valid = [
        ("visa", "4111111111111111"),
        ("visa", "4012888888881881"),
        ("visa 13", "4222222222222"),
        ("mastercard", "5555555555554444"),
        ("mastercard 2-series", "2223003122003222"),
        ("amex", "378282246310005"),
        ("amex", "371449635398431"),
        ("discover", "6011111111111117"),
        ("discover", "6011000990139424"),
        ("diners", "30569309025904"),
        ("diners", "38520000023237"),
        ("jcb", "3530111333300000"),
        ("jcb", "3566002020360505"),
        ("unionpay", "6200000000000005"),
        ("maestro", "6759649826438453"),
    ];
    for (brand, n) in valid {
        assert!(validate::luhn(n.as_bytes()), "{brand} {n} passes Luhn");
        assert!(validate::credit_card(n.as_bytes()), "{brand} {n}");
        assert_finds(&format!("pay with {n} today"), types::CREDIT_CARD, n);
    }
    // Grouped forms.
    assert_finds(
        "card 4111 1111 1111 1111.",
        types::CREDIT_CARD,
        "4111 1111 1111 1111",
    );
    assert_finds(
        "card 4111-1111-1111-1111",
        types::CREDIT_CARD,
        "4111-1111-1111-1111",
    );
    assert_finds(
        "amex 3782 822463 10005",
        types::CREDIT_CARD,
        "3782 822463 10005",
    );
    assert_finds(
        "ref 2024 4111 1111 1111 1111",
        types::CREDIT_CARD,
        "4111 1111 1111 1111",
    );
}

#[test]
fn invalid_cards() {
    for n in [
        "4111111111111112",    // Luhn fails
        "1234567812345670",    // Luhn passes, no network starts with 1
        "3782822463100050",    // Amex prefix with 16 digits
        "5555555555554",       // Mastercard prefix with 13 digits
        "0000000000000000",    // repeated
        "4111 111 1111 1111",  // odd grouping
        "4111-1111 1111-1111", // mixed separators
    ] {
        assert_no(&format!("number {n} here"), types::CREDIT_CARD);
    }
    assert!(validate::luhn(b"1234567812345670"));
    assert!(!validate::credit_card(b"1234567812345670"));
    assert!(!validate::luhn(b"12a4"));
}

// ---- SSN / ITIN / national ids ------------------------------------------

#[test]
fn ssn_rules() {
    for ok in [
        "123-45-6789",
        "078-05-1120",
        "001-01-0001",
        "899-99-9999",
        "123 45 6789",
    ] {
        assert_finds(&format!("ssn {ok} on file"), types::SSN, ok);
    }
    for bad in [
        "000-12-3456",
        "666-12-3456",
        "900-12-3456",
        "999-45-6789",
        "123-00-4567",
        "123-45-0000",
        "111-11-1111",
        "123-45 6789",
        "123-45-67890",
    ] {
        assert_no(&format!("ssn {bad} on file"), types::SSN);
    }
    assert!(validate::ssn(b"123456789"));
    assert!(!validate::ssn(b"666123456"));
    assert!(!validate::ssn(b"12345678"));
}

#[test]
fn bare_ssn_needs_context() {
    assert_finds("SSN: 123456789", types::SSN, "123456789");
    assert_finds("social security number 123456789.", types::SSN, "123456789");
    assert_no("order 123456789 shipped", types::SSN);
    let f = findings("/patient/ssn", "123456789");
    assert!(f.iter().any(|f| f.pii_type == types::SSN), "{f:?}");
}

#[test]
fn itin() {
    assert!(validate::itin(b"912701234"));
    assert!(validate::itin(b"999941234"));
    assert!(!validate::itin(b"912931234"), "group 93 is not issued");
    assert!(!validate::itin(b"912401234"));
    let f = findings("/t", "ITIN 912-70-1234");
    assert!(
        f.iter()
            .any(|f| f.rule == "us_itin" && f.pii_type == types::SSN),
        "{f:?}"
    );
}

#[test]
fn national_ids_map_to_ssn() {
    let cases = [
        ("NINO AB123456C", "AB123456C", "uk_nino"),
        ("NI number AB 12 34 56 C", "AB 12 34 56 C", "uk_nino"),
        ("NHS number 943 476 5919", "943 476 5919", "uk_nhs"),
        ("nhs 9434765919", "9434765919", "uk_nhs"),
        ("DNI 12345678Z", "12345678Z", "es_nif"),
        ("NIE X1234567L", "X1234567L", "es_nie"),
        ("CF RSSMRA85T10A562S", "RSSMRA85T10A562S", "it_fiscal_code"),
        ("NRIC S1234567D", "S1234567D", "sg_nric"),
        ("Aadhaar 2341 2341 2346", "2341 2341 2346", "in_aadhaar"),
        ("PAN card ABCPE1234F", "ABCPE1234F", "in_pan"),
        ("TFN 123 456 782", "123 456 782", "au_tfn"),
        ("ABN 51 824 753 556", "51 824 753 556", "au_abn"),
        ("PESEL 44051401359", "44051401359", "pl_pesel"),
        ("passport number 123456789", "123456789", "us_passport"),
    ];
    for (text, needle, rule) in cases {
        let f = findings("/t", text);
        assert!(
            f.iter().any(|f| f.rule == rule
                && f.pii_type == types::SSN
                && &text[f.start..f.end] == needle),
            "{rule} in {text:?}: {f:?}"
        );
    }
    // Same shapes with a wrong checksum or letter.
    for text in [
        "NINO DA123456C",
        "NINO AB123456E",
        "NHS number 943 476 5918",
        "DNI 12345678A",
        "NIE X1234567A",
        "CF RSSMRA85T10A562T",
        "NRIC S1234567A",
        "Aadhaar 2341 2341 2345",
        "PAN card ABCQE1234F",
        "PESEL 44051401358",
    ] {
        assert_no(text, types::SSN);
    }
    // Context-anchored ids need their context.
    assert_no("id 9434765919", types::SSN);
    assert_no("id 2341 2341 2346", types::SSN);
    assert_no("code ABCPE1234F", types::SSN);
}

#[test]
fn validators_direct() {
    assert!(validate::nhs(b"9434765919"));
    assert!(!validate::nhs(b"9434765918"));
    assert!(validate::verhoeff(b"2363"));
    assert!(validate::aadhaar(b"234123412346"));
    assert!(!validate::aadhaar(b"134123412346"));
    assert!(validate::aba_routing(b"011000015"));
    assert!(validate::aba_routing(b"021000021"));
    assert!(!validate::aba_routing(b"021000022"));
    assert!(
        !validate::aba_routing(b"991000021"),
        "prefix 99 is not a Fed district"
    );
    assert!(validate::uk_nino(b"AB123456C"));
    assert!(!validate::uk_nino(b"GB123456C"));
    assert!(validate::es_nif(b"12345678Z"));
    assert!(validate::es_nie(b"X1234567L"));
    assert!(validate::it_fiscal_code(b"RSSMRA85T10A562S"));
    assert!(validate::sg_nric(b"S1234567D"));
    assert!(validate::sg_nric(b"T1234567J"));
    assert!(validate::au_tfn(b"123456782"));
    assert!(validate::au_abn(b"51824753556"));
    assert!(!validate::au_abn(b"51824753557"));
    assert!(validate::pesel(b"44051401359"));
    assert!(validate::in_pan(b"ABCPE1234F"));
}

// ---- IBAN and bank numbers ----------------------------------------------

#[test]
fn iban_mod97() {
    for ok in [
        "DE89370400440532013000",
        "GB82WEST12345698765432",
        "FR1420041010050500013M02606",
        "NL91ABNA0417164300",
        "CH9300762011623852957",
        "NO9386011117947",
    ] {
        assert!(validate::iban(ok.as_bytes()), "{ok}");
        assert_finds(&format!("pay to {ok} now"), types::CREDIT_CARD, ok);
    }
    assert_finds(
        "IBAN DE89 3704 0044 0532 0130 00 please",
        types::CREDIT_CARD,
        "DE89 3704 0044 0532 0130 00",
    );
    for bad in [
        "DE89370400440532013001",    // checksum
        "DE8937040044053201300",     // length
        "XX89370400440532013000",    // no such country
        "DE89 370 40044 0532013000", // bad grouping
    ] {
        assert!(
            !validate::iban(bad.replace(' ', "").as_bytes()) || bad.contains(' '),
            "{bad}"
        );
        assert_no(&format!("pay to {bad} now"), types::CREDIT_CARD);
    }
}

#[test]
fn bank_numbers_in_context() {
    let f = findings("/t", "routing number 021000021, account number 12345678901");
    assert!(f.iter().any(|f| f.rule == "aba_routing"), "{f:?}");
    assert!(f.iter().any(|f| f.rule == "bank_account"), "{f:?}");
    assert!(f.iter().all(|f| f.pii_type == types::CREDIT_CARD));
    assert_no("shipment 12345678901 left", types::CREDIT_CARD);
}

// ---- e-mail, phone, IP ---------------------------------------------------

#[test]
fn emails() {
    for e in [
        "bob@example.com",
        "first.last+tag@sub.example.co.uk",
        "a_b-c%d@example.io",
        "x@xn--bcher-kva.example",
    ] {
        assert_finds(&format!("write to <{e}> today."), types::EMAIL, e);
    }
    for not in [
        "user@localhost",
        "icon@2x.png",
        "@mention",
        "a@b",
        "pkg@1.2.3",
        "foo@bar.c",
        ".@example.com",
    ] {
        assert_no(&format!("see {not} here"), types::EMAIL);
    }
}

#[test]
fn phones() {
    for p in [
        "555-123-4567",
        "(555) 123-4567",
        "555.123.4567",
        "555 123 4567",
        "+1 555 123 4567",
        "+1-555-123-4567",
        "+1 (555) 123-4567",
        "1 555 123 4567",
        "+44 20 7946 0958",
        "+49 30 1234567",
        "+14155552671",
    ] {
        assert_finds(&format!("call {p} now"), types::PHONE, p);
    }
    assert_finds("phone: 020 7946 0958", types::PHONE, "020 7946 0958");
    assert_finds("tel 4155552671", types::PHONE, "4155552671");
    assert_no("id 4155552671", types::PHONE);
    assert_finds("call 555-1234 now", types::PHONE, "555-1234");
    assert_no("order 555-1234 now", types::PHONE);
    let f = findings("/contact/mobile", "07700 900123");
    assert!(f.iter().any(|f| f.pii_type == types::PHONE), "{f:?}");
}

#[test]
fn ipv4_octets() {
    for ok in [
        "192.0.2.1",
        "198.18.0.1",
        "255.255.255.255",
        "0.0.0.0",
        "10.0.0.1",
    ] {
        assert!(validate::ipv4(ok), "{ok}");
        assert_finds(&format!("host {ok} up"), types::IP_ADDRESS, ok);
    }
    for bad in [
        "256.1.1.1",
        "192.168.01.1",
        "1.2.3",
        "1.2.3.4.5",
        "192.0.2.300",
    ] {
        assert!(!validate::ipv4(bad), "{bad}");
        assert_no(&format!("host {bad} up"), types::IP_ADDRESS);
    }
    assert_finds("hosts 192.0.2.1 192.0.2.2", types::IP_ADDRESS, "192.0.2.2");
    assert_finds("dial 192.0.2.1:8080", types::IP_ADDRESS, "192.0.2.1");
    assert_finds("net 198.18.0.0/15", types::IP_ADDRESS, "198.18.0.0");
}

#[test]
fn ipv4_versus_versions() {
    for v in [
        "version 1.2.3.4",
        "v1.2.3.4",
        "release 2.0.1.3 is out",
        "firmware version is 4.3.2.1",
        "upgraded to 1.2.3.4",
        "pkg==1.2.3.4",
        "lib@1.2.3.4",
        "1.2.3.4-beta",
        "Build 10.0.19041.1",
    ] {
        assert_no(v, types::IP_ADDRESS);
    }
    // Without version context a dotted quad is reported, with low
    // confidence when every octet is a single digit.
    let f = findings("/t", "go to 1.2.3.4 now");
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].confidence, 0.5);
    let f = findings("/t", "go to 192.0.2.1 now");
    assert!(f[0].confidence > 0.8);
}

#[test]
fn ipv6_forms() {
    for ok in [
        "2001:db8::1",
        "2001:0db8:0000:0000:0000:ff00:0042:8329",
        "fe80::1ff:fe23:4567:890a",
        "::1",
        "::ffff:192.0.2.128",
        "2001:db8:85a3::8a2e:370:7334",
        "1:2:3:4:5:6:7:8",
    ] {
        assert!(validate::ipv6(ok), "{ok}");
        assert_finds(&format!("addr {ok} up"), types::IP_ADDRESS, ok);
    }
    assert_finds(
        "connect [2001:db8::1]:8080",
        types::IP_ADDRESS,
        "2001:db8::1",
    );
    assert_finds("fe80::1.", types::IP_ADDRESS, "fe80::1");
    for not in [
        "std::vector",
        "Foo::Bar::baz",
        "a::b",
        "12:30:45",
        "00:1A:2B:3C:4D:5E",
        "2001:db8:::1",
        "1:2:3:4:5:6:7:8:9",
        "note :: end",
    ] {
        assert_no(&format!("x {not} y"), types::IP_ADDRESS);
    }
}

// ---- names and addresses -------------------------------------------------

#[test]
fn titled_names() {
    for (text, name) in [
        ("ask Mr. John Smith", "Mr. John Smith"),
        ("ask Mrs Jane Doe.", "Mrs Jane Doe"),
        ("ask Ms. Ada Lovelace,", "Ms. Ada Lovelace"),
        ("ask Dr. Gregory House", "Dr. Gregory House"),
        ("ask Prof. Marie Curie", "Prof. Marie Curie"),
        ("ask Professor Moriarty", "Professor Moriarty"),
        ("ask Dr. O'Brien-Smith", "Dr. O'Brien-Smith"),
        ("ask Prof. J. R. Tolkien", "Prof. J. R. Tolkien"),
        ("ask Dr. Zoë Müller", "Dr. Zoë Müller"),
        ("ask Mx. Sam Lee", "Mx. Sam Lee"),
    ] {
        assert_finds(text, types::NAME, name);
    }
    for not in [
        "Mr. and Mrs. are titles",
        "Dr. strangelove",
        "Mr. NASA",
        "Prof.",
        "Drs. Smith",
    ] {
        assert_no(not, types::NAME);
    }
}

#[test]
fn street_addresses() {
    for (text, addr) in [
        ("at 123 Main St today", "123 Main St"),
        ("at 123 Main St. today", "123 Main St."),
        ("at 742 Evergreen Terrace", "742 Evergreen Terrace"),
        (
            "at 1600 Pennsylvania Avenue NW",
            "1600 Pennsylvania Avenue NW",
        ),
        ("at 350 Fifth Avenue", "350 Fifth Avenue"),
        ("at 10 Downing Street", "10 Downing Street"),
        ("at 221B Baker Street", "221B Baker Street"),
        ("at 42 W 5th Ave, Apt 4B, ok", "42 W 5th Ave, Apt 4B"),
        ("at 500 Oak Blvd Suite 200", "500 Oak Blvd Suite 200"),
        ("at 1 Infinite Loop", "1 Infinite Loop"),
        ("at 77 MASSACHUSETTS AVE", "77 MASSACHUSETTS AVE"),
        (
            "at 1600 Amphitheatre Parkway, Mountain View, CA 94043 USA",
            "1600 Amphitheatre Parkway, Mountain View, CA 94043",
        ),
    ] {
        assert_finds(text, types::ADDRESS, addr);
    }
    for not in [
        "we sold 5 New Features",
        "chapter 12 Street Fighter",
        "top 10 tips",
        "123 main street",
        "$5 Main St",
        "v2 Main Street",
    ] {
        assert_no(not, types::ADDRESS);
    }
}

// ---- secrets -------------------------------------------------------------

/// (text, type, rule) for provider formats.
fn provider_samples() -> Vec<(String, &'static str, &'static str)> {
    use types::*;
    vec![
        (
            format!("sk-proj-{}", rnd(48, B64URL, 1)),
            API_KEY,
            "openai_project",
        ),
        (
            format!("sk-svcacct-{}", rnd(48, B64URL, 2)),
            API_KEY,
            "openai_service_account",
        ),
        (
            format!("sk-{}T3BlbkFJ{}", rnd(20, ALNUM, 3), rnd(20, ALNUM, 4)),
            API_KEY,
            "sk_key",
        ),
        (
            format!("sk-ant-api03-{}AA", rnd(93, B64URL, 5)),
            API_KEY,
            "anthropic",
        ),
        (
            format!("AIza{}", rnd(35, B64URL, 6)),
            API_KEY,
            "google_api_key",
        ),
        (
            format!("GOCSPX-{}", rnd(28, B64URL, 7)),
            API_KEY,
            "google_oauth_secret",
        ),
        (
            format!("xoxb-123456789012-1234567890123-{}", rnd(24, ALNUM, 8)),
            API_KEY,
            "slack_bot",
        ),
        (
            format!("xoxp-1234-5678-{}", rnd(32, ALNUM, 9)),
            API_KEY,
            "slack_user",
        ),
        (
            format!(
                "https://hooks.slack.com/services/T0123ABCD/B0123ABCD/{}",
                rnd(24, ALNUM, 10)
            ),
            API_KEY,
            "slack_webhook",
        ),
        (format!("sk_live_{}", rnd(24, ALNUM, 11)), API_KEY, "stripe"),
        (
            format!("rk_live_{}", rnd(24, ALNUM, 12)),
            API_KEY,
            "stripe_restricted",
        ),
        (
            format!("glpat-{}", rnd(20, B64URL, 13)),
            API_KEY,
            "gitlab_pat",
        ),
        (format!("npm_{}", rnd(36, ALNUM, 14)), API_KEY, "npm"),
        (
            format!("pypi-AgEIcHlwaS5vcmc{}", rnd(70, B64URL, 15)),
            API_KEY,
            "pypi",
        ),
        (
            format!("hf_{}", rnd(34, LETTERS, 16)),
            API_KEY,
            "huggingface",
        ),
        (
            format!("SK{}", rnd(32, HEXL, 17)),
            API_KEY,
            "twilio_api_key",
        ),
        (
            format!("SG.{}.{}", rnd(22, B64URL, 18), rnd(43, B64URL, 19)),
            API_KEY,
            "sendgrid",
        ),
        (
            format!("dop_v1_{}", rnd(64, HEXL, 20)),
            API_KEY,
            "digitalocean_pat",
        ),
        (
            format!(
                "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={}==;EndpointSuffix=core.windows.net",
                rnd(86, B64, 21)
            ),
            API_KEY,
            "azure_storage_key",
        ),
        (
            format!("secret {}8Q~{}", rnd(3, ALNUM, 22), rnd(34, ALNUM, 23)),
            API_KEY,
            "azure_ad_client_secret",
        ),
        (
            format!(
                "MTA{}.{}.{}",
                rnd(21, ALNUM, 24),
                rnd(6, B64URL, 25),
                rnd(27, ALNUM, 26)
            ),
            API_KEY,
            "discord_bot_token",
        ),
        (
            format!(
                "https://discord.com/api/webhooks/123456789012345678/{}",
                rnd(68, B64URL, 27)
            ),
            API_KEY,
            "discord_webhook",
        ),
        (
            format!("bot 123456789:AA{}", rnd(33, B64URL, 28)),
            API_KEY,
            "telegram_bot_token",
        ),
        (format!("shpat_{}", rnd(32, HEXL, 29)), API_KEY, "shopify"),
        (
            format!("ATATT3{}", rnd(180, B64URL, 30)),
            API_KEY,
            "atlassian",
        ),
        (format!("dapi{}", rnd(32, HEXL, 31)), API_KEY, "databricks"),
        (
            format!("hvs.{}", rnd(95, B64URL, 32)),
            API_KEY,
            "vault_service_token",
        ),
        (
            format!("key-{}", rnd(32, HEXL, 33)),
            API_KEY,
            "key_prefixed",
        ),
        (format!("gsk_{}", rnd(52, ALNUM, 34)), API_KEY, "groq"),
        (
            format!("dckr_pat_{}", rnd(27, B64URL, 35)),
            API_KEY,
            "docker_hub",
        ),
        (
            format!("ghp_{}", rnd(36, ALNUM, 40)),
            GITHUB_TOKEN,
            "github_pat",
        ),
        (
            format!("gho_{}", rnd(36, ALNUM, 41)),
            GITHUB_TOKEN,
            "github_oauth",
        ),
        (
            format!("ghu_{}", rnd(36, ALNUM, 42)),
            GITHUB_TOKEN,
            "github_user_to_server",
        ),
        (
            format!("ghs_{}", rnd(36, ALNUM, 43)),
            GITHUB_TOKEN,
            "github_server_to_server",
        ),
        (
            format!("ghr_{}", rnd(36, ALNUM, 44)),
            GITHUB_TOKEN,
            "github_refresh",
        ),
        (
            format!("github_pat_{}_{}", rnd(22, ALNUM, 45), rnd(59, ALNUM, 46)),
            GITHUB_TOKEN,
            "github_fine_grained_pat",
        ),
        (
            format!("AKIA{}", rnd(16, UPPER_B32, 50)),
            AWS_KEY,
            "aws_access_key_id",
        ),
        (
            format!("ASIA{}", rnd(16, UPPER_B32, 51)),
            AWS_KEY,
            "aws_access_key_id",
        ),
        (
            format!("aws_secret_access_key = {}", rnd(40, B64, 52)),
            AWS_KEY,
            "aws_secret_access_key",
        ),
        (
            format!("AGE-SECRET-KEY-1{}", rnd(58, UPPER_B32, 53)),
            PRIVATE_KEY,
            "age_secret_key",
        ),
        (
            "HEROKU_KEY: 01234567-89ab-cdef-0123-456789abcdef".to_string(),
            API_KEY,
            "heroku_api_key",
        ),
        (
            format!("datadog_api_key = {}", rnd(40, HEXL, 54)),
            API_KEY,
            "datadog",
        ),
    ]
}

#[test]
fn provider_formats() {
    for (text, ty, rule) in provider_samples() {
        let text = format!("config: {text} end");
        let f = findings("/t", &text);
        assert!(
            f.iter().any(|f| f.pii_type == ty && f.rule == rule),
            "{rule} in {text:?}: {f:?}"
        );
    }
}

#[test]
fn provider_formats_reject_wrong_shapes() {
    for text in [
        "ghp_short",
        "AKIA123",
        "sk-learn is a library",
        "sk-abcdefghijklmnopqrstuvwxyz", // no digit: not random enough
        "key-value pairs",
        "key-management-service-configuration",
        "xoxb-nodigitshere-atall",
        "hf_tooshort",
        "AIzaShort",
        "SKU12345",
        "npm_install",
    ] {
        let f = findings("/t", text);
        assert!(f.is_empty(), "{text:?}: {f:?}");
    }
}

#[test]
fn jwts() {
    let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    assert_finds(&format!("Authorization: Bearer {jwt}"), types::JWT, jwt);
    let unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxMjM0NTY3ODkwIn0.";
    assert_finds(
        &format!("tok {unsigned} x"),
        types::JWT,
        &unsigned[..unsigned.len() - 1],
    );
    // Base64 JSON that is not a JWT, and a header that is not JSON.
    assert_no("blob eyJmb28iOiJiYXIifQ== end", types::JWT);
    assert_no(
        "x eyJub3RhbGdvcml0aG0i.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abc",
        types::JWT,
    );
}

#[test]
fn private_keys() {
    for label in [
        "RSA PRIVATE KEY",
        "EC PRIVATE KEY",
        "DSA PRIVATE KEY",
        "OPENSSH PRIVATE KEY",
        "PRIVATE KEY",
        "ENCRYPTED PRIVATE KEY",
        "PGP PRIVATE KEY BLOCK",
    ] {
        let block = format!("-----BEGIN {label}-----\nMIIEowIBAAKCAQEA\n-----END {label}-----");
        assert_finds(&format!("key:\n{block}\nend"), types::PRIVATE_KEY, &block);
    }
    // Truncated, and JSON-escaped newlines as in a GCP service-account key.
    assert_finds(
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA",
        types::PRIVATE_KEY,
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA",
    );
    let gcp = r#"{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\n-----END PRIVATE KEY-----\n", "client_email": "svc@proj.iam.gserviceaccount.com"}"#;
    assert_finds(
        gcp,
        types::PRIVATE_KEY,
        r"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\n-----END PRIVATE KEY-----",
    );
    assert_no(
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
        types::PRIVATE_KEY,
    );
    assert_no(
        "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
        types::PRIVATE_KEY,
    );
}

#[test]
fn database_urls() {
    for url in [
        "postgres://app:Zx9qLm2P@db.internal:5432/app",
        "postgresql://user:pa%24%24@localhost/db?sslmode=require",
        "postgresql+psycopg2://u:secretpw@db/x",
        "mysql://root:toor@10.0.0.5:3306/shop",
        "mongodb+srv://admin:hunter22@cluster0.example.net/test?retryWrites=true",
        "redis://:s3cretpass@cache:6379/0",
        "rediss://default:abc123@redis.example.com:6380",
        "amqp://guest:guest@rabbit:5672/vhost",
        "jdbc:mysql://db:3306/app?user=app&password=Zx9q",
        "jdbc:sqlserver://db:1433;databaseName=app;user=sa;password=Zx9q",
    ] {
        assert_finds(&format!("DATABASE_URL={url} now"), types::DATABASE_URL, url);
    }
    for no_creds in [
        "postgres://db.internal:5432/app",
        "mysql://user@db/app",
        "redis://cache:6379",
        "mongodb://localhost/test",
    ] {
        assert_no(&format!("url {no_creds} now"), types::DATABASE_URL);
    }
    // Credentials in other URLs are a password.
    let f = resolved("clone https://alice:Tr0ub4dor@git.example.com/repo.git");
    assert_eq!(f, vec![("password".to_string(), "Tr0ub4dor".to_string())]);
    assert!(resolved("see https://example.com/a:b@c").is_empty());
}

#[test]
fn password_assignments() {
    for (text, pw) in [
        ("password=hunter2", "hunter2"),
        ("pwd: Tr0ub4dor", "Tr0ub4dor"),
        ("PASSWORD = 'c0rrect horse'", "c0rrect horse"),
        (r#"{"password": "s3cr3t!"}"#, "s3cr3t!"),
        (r#"{\"passwd\": \"s3cr3t!\"}"#, "s3cr3t!"),
        ("DB_PASSWORD=changeme", "changeme"),
        ("dbPassword: letmein123", "letmein123"),
        (
            "passphrase := correct-horse-battery",
            "correct-horse-battery",
        ),
        ("--password=p@ss", "p@ss"),
        ("pass word: x, password: 1234", "1234"),
    ] {
        assert_finds(text, types::PASSWORD, pw);
    }
    for not in [
        "Reset your password: click the link below",
        "The password is stored securely",
        "password: ********",
        "password=${DB_PASSWORD}",
        "password: <your password>",
        "password_policy: strict",
        "passwords: 3",
        "password == input",
        "password: null",
        "password=[REDACTED:password]",
    ] {
        assert_no(not, types::PASSWORD);
    }
}

#[test]
fn basic_auth_and_bearer() {
    // "alice:Tr0ub4dor" in base64.
    assert_finds(
        "Authorization: Basic YWxpY2U6VHIwdWI0ZG9y",
        types::PASSWORD,
        "YWxpY2U6VHIwdWI0ZG9y",
    );
    assert_no("Basic usage of the tool", types::PASSWORD);
    assert_finds(
        "Authorization: Bearer a1b2c3d4e5f6g7h8i9j0klmn",
        types::API_KEY,
        "a1b2c3d4e5f6g7h8i9j0klmn",
    );
}

#[test]
fn generic_secret_assignments() {
    for (text, v) in [
        ("api_key = \"a8F3kLq92ZxPwe7Rt\"", "a8F3kLq92ZxPwe7Rt"),
        (
            "client_secret: 9f8e7d6c5b4a3f2e1d0c",
            "9f8e7d6c5b4a3f2e1d0c",
        ),
        ("X-Api-Key: Zk3pQ9xL2mN8vB4cT1", "Zk3pQ9xL2mN8vB4cT1"),
        ("accessToken=Yh7Fq2Lm9Pz4Rt6Wx8", "Yh7Fq2Lm9Pz4Rt6Wx8"),
        (
            "SECRET_KEY='dj4ng0-s3cr3t-k3y-xyz987'",
            "dj4ng0-s3cr3t-k3y-xyz987",
        ),
    ] {
        assert_finds(text, types::API_KEY, v);
    }
    for not in [
        "api_key: your-api-key-here",
        "token: abc",
        "secret: I love cats",
        "max_tokens=4096",
        "tokenizer: bpe",
    ] {
        assert_no(not, types::API_KEY);
    }
}

#[test]
fn secret_named_fields() {
    use agentfed_policy_pii::secret_field_type;
    let cases: &[(&str, Option<&str>)] = &[
        ("password", Some("password")),
        ("Password", Some("password")),
        ("db_password", Some("password")),
        ("newPassword", Some("password")),
        ("password_confirmation", Some("password")),
        ("passwd", Some("password")),
        ("pwd", Some("password")),
        ("user-pwd", Some("password")),
        ("passphrase", Some("password")),
        ("secret", Some("api_key")),
        ("client_secret", Some("api_key")),
        ("clientSecret", Some("api_key")),
        ("api_key", Some("api_key")),
        ("apiKey", Some("api_key")),
        ("API-KEY", Some("api_key")),
        ("apikey", Some("api_key")),
        ("x-api-key", Some("api_key")),
        ("access_token", Some("api_key")),
        ("auth_token", Some("api_key")),
        ("refreshToken", Some("api_key")),
        ("token", Some("api_key")),
        ("authorization", Some("api_key")),
        ("credentials", Some("api_key")),
        ("private_key", Some("private_key")),
        ("privateKey", Some("private_key")),
        ("ssh_private_key", Some("private_key")),
        ("aws_secret_access_key", Some("aws_key")),
        ("AWS_SECRET_ACCESS_KEY", Some("aws_key")),
        // Not secrets.
        ("password_hint", None),
        ("password_policy", None),
        ("passwordLength", None),
        ("max_tokens", None),
        ("prompt_tokens", None),
        ("next_token", None),
        ("eos_token", None),
        ("token_type", None),
        ("private_key_id", None),
        ("tokenizer", None),
        ("key", None),
        ("primary_key", None),
        ("name", None),
        ("", None),
    ];
    for (seg, want) in cases {
        assert_eq!(secret_field_type(seg), *want, "{seg}");
    }
    // End to end: the whole value, with confidence 0.9.
    let f = findings("/db/password", "correct horse battery staple");
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].pii_type, f[0].start, f[0].end), ("password", 0, 28));
    assert_eq!(f[0].confidence, 0.9);
    let f = findings("/auth/client_secret", "abc");
    assert_eq!(f[0].pii_type, "api_key");
    let f = findings("/keys/a~1private_key", "anything");
    assert_eq!(
        f[0].pii_type, "private_key",
        "JSON Pointer escapes are decoded"
    );
    // Empty and placeholder values are not findings.
    for v in [
        "",
        "   ",
        "null",
        "********",
        "${DB_PASSWORD}",
        "[REDACTED:password]",
    ] {
        assert!(findings("/password", v).is_empty(), "{v:?}");
    }
    // PWD in an environment dump is a directory.
    assert!(findings("/env/PWD", "/home/alice").is_empty());
    // The field rule wins over what is inside the value.
    let r = resolved_at("/user/password", "bob@example.com");
    assert_eq!(r, vec![("password".to_string(), 0, 15)]);
}

fn resolved_at(path: &str, text: &str) -> Vec<(String, u32, u32)> {
    use agentfed_guest::pii::TrustLevel;
    scan(&[(path, text)], TrustLevel::Privileged)
        .detections
        .iter()
        .map(|d| (d.pii_type.to_string(), d.start, d.end))
        .collect()
}
