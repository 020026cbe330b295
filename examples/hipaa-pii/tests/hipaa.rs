//! The medical detectors and the stricter table, natively.

use agentfed_guest::pii::{Direction, PiiAction, ScanRequest, ScanResult, StringValue, TrustLevel};
use hipaa_pii::{
    action_table, dea_number_valid, icd10_shape, mbi_valid, npi_valid, parse_date, policy, types,
};

use PiiAction::{Block as B, Hash as H, Pass as P, Redact as R};

fn hash(s: &str) -> String {
    let h = s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{h:016x}")
}

fn scan_at(path: &str, text: &str, level: TrustLevel) -> ScanResult {
    let req = ScanRequest {
        direction: Direction::Outbound,
        peer_level: level,
        message_type: "referral".into(),
        values: vec![StringValue {
            path: path.into(),
            value: text.into(),
        }],
    };
    policy().scan(&req, &mut |s| hash(s)).expect("scan")
}

/// Resolved detections at UNTRUSTED as (type, text).
fn found(text: &str) -> Vec<(String, String)> {
    found_at("/note", text)
}

fn found_at(path: &str, text: &str) -> Vec<(String, String)> {
    scan_at(path, text, TrustLevel::Untrusted)
        .detections
        .iter()
        .map(|d| {
            (
                d.pii_type.to_string(),
                text[d.start as usize..d.end as usize].to_string(),
            )
        })
        .collect()
}

#[track_caller]
fn assert_finds(text: &str, ty: &str, needle: &str) {
    let f = found(text);
    assert!(
        f.iter().any(|(t, s)| t == ty && s == needle),
        "expected {ty} {needle:?} in {text:?}, found {f:?}"
    );
}

#[track_caller]
fn assert_none_of(text: &str, ty: &str) {
    let f = found(text);
    assert!(
        !f.iter().any(|(t, _)| t == ty),
        "unexpected {ty} in {text:?}: {f:?}"
    );
}

#[test]
fn medical_record_numbers() {
    assert_finds("MRN: 00123456", types::MEDICAL_RECORD_NUMBER, "00123456");
    assert_finds(
        "mrn#A1234567 admitted",
        types::MEDICAL_RECORD_NUMBER,
        "A1234567",
    );
    assert_finds(
        "Medical record number: MR-2024-88231.",
        types::MEDICAL_RECORD_NUMBER,
        "MR-2024-88231",
    );
    assert_finds(
        "patient id is 77881234",
        types::MEDICAL_RECORD_NUMBER,
        "77881234",
    );
    assert_none_of("order 00123456 shipped", types::MEDICAL_RECORD_NUMBER);
    assert_none_of("MRN: pending", types::MEDICAL_RECORD_NUMBER);
    assert_none_of("MRN 123", types::MEDICAL_RECORD_NUMBER);
    assert_eq!(
        found_at("/patient/mrn", " 00123456 "),
        vec![("medical_record_number".into(), "00123456".into())]
    );
}

#[test]
fn health_plan_ids_and_mbi() {
    assert!(mbi_valid(b"1EG4TE5MK73"));
    assert!(!mbi_valid(b"1EG4TE5MK7S"), "last must be a digit");
    assert!(!mbi_valid(b"0EG4TE5MK73"), "first must be 1-9");
    assert!(!mbi_valid(b"1SG4TE5MK73"), "S is excluded");
    assert_finds(
        "Medicare MBI 1EG4-TE5-MK73 on file",
        types::HEALTH_PLAN_ID,
        "1EG4-TE5-MK73",
    );
    assert_finds("id 1EG4TE5MK73", types::HEALTH_PLAN_ID, "1EG4TE5MK73");
    assert_finds(
        "Member ID: XYZ123456789",
        types::HEALTH_PLAN_ID,
        "XYZ123456789",
    );
    assert_finds(
        "policy number 88-1234-5567",
        types::HEALTH_PLAN_ID,
        "88-1234-5567",
    );
    assert_none_of("member since 2019", types::HEALTH_PLAN_ID);
    assert_eq!(
        found_at("/coverage/member_id", "ABC12345678"),
        vec![("health_plan_id".into(), "ABC12345678".into())]
    );
}

#[test]
fn npi_check_digit() {
    assert!(npi_valid(b"1234567893"));
    assert!(!npi_valid(b"1234567890"));
    assert!(!npi_valid(b"3234567893"), "must start with 1 or 2");
    assert_finds("Referring NPI: 1234567893", types::NPI, "1234567893");
    assert_finds(
        "national provider identifier 1234567893",
        types::NPI,
        "1234567893",
    );
    assert_none_of("NPI: 1234567890", types::NPI);
    // Without context a valid-looking number (e.g. a Unix timestamp) is not an NPI.
    assert_none_of("ts 1234567893", types::NPI);
    assert_eq!(
        found_at("/provider/npi", "1234567893"),
        vec![("npi".into(), "1234567893".into())]
    );
}

#[test]
fn dea_checksum() {
    assert!(dea_number_valid(b"AB1234563"));
    assert!(dea_number_valid(b"M91234563"));
    assert!(!dea_number_valid(b"AB1234567"));
    assert!(!dea_number_valid(b"ZB1234563"), "Z is no registrant type");
    assert_finds("DEA# AB1234563", types::DEA_NUMBER, "AB1234563");
    assert_finds(
        "prescriber AB1234563 signed",
        types::DEA_NUMBER,
        "AB1234563",
    );
    assert_none_of("code AB1234567", types::DEA_NUMBER);
    let r = scan_at(
        "/n",
        "DEA AB1234563 verified; the pharmacy also listed AB1234563",
        TrustLevel::Untrusted,
    );
    let conf: Vec<f32> = r.detections.iter().map(|d| d.confidence).collect();
    assert!(conf[0] > conf[1], "context raises confidence: {conf:?}");
}

#[test]
fn icd10_in_context() {
    for ok in ["I10", "E11.9", "J45.909", "S72.001A", "C4A.0", "U07.1"] {
        assert!(icd10_shape(ok.as_bytes()), "{ok}");
    }
    for bad in ["A1C", "E1", "e11.9", "E11.", "E11.99999", "11.9"] {
        assert!(!icd10_shape(bad.as_bytes()), "{bad}");
    }
    assert_finds(
        "Diagnosis: E11.9 (type 2 diabetes)",
        types::DIAGNOSIS_CODE,
        "E11.9",
    );
    let f = found("Dx: E11.9, I10 and J45.909.");
    let codes: Vec<&str> = f
        .iter()
        .filter(|(t, _)| t == types::DIAGNOSIS_CODE)
        .map(|(_, s)| s.as_str())
        .collect();
    assert_eq!(codes, ["E11.9", "I10", "J45.909"]);
    assert_finds("ICD-10 F32.A noted", types::DIAGNOSIS_CODE, "F32.A");
    // No context: a code-shaped token is left alone; context does not
    // reach across lines.
    assert_none_of("Room E11 is on floor 2", types::DIAGNOSIS_CODE);
    assert_none_of(
        "diagnosis pending\nsee E11.9 spec sheet",
        types::DIAGNOSIS_CODE,
    );
    assert_none_of("Dx: A1C trending down", types::DIAGNOSIS_CODE);
}

#[test]
fn dates_of_birth_in_context() {
    for (text, date) in [
        ("DOB: 04/12/1985", "04/12/1985"),
        ("D.O.B. 4-12-85", "4-12-85"),
        ("date of birth 1985-04-12", "1985-04-12"),
        ("Date of Birth: 31.12.1970", "31.12.1970"),
        ("born on March 3, 1990 in Ohio", "March 3, 1990"),
        ("born 3 Mar 1990", "3 Mar 1990"),
        ("birthdate: Sept 21st 1961", "Sept 21st 1961"),
    ] {
        assert_finds(text, types::DATE_OF_BIRTH, date);
    }
    for text in [
        "DOB: 13/45/1985",
        "DOB: 02/30/1985",
        "DOB unknown",
        "admitted 04/12/1985",
        "born in 1990",
        "DOB: 04/12/1785",
    ] {
        assert_none_of(text, types::DATE_OF_BIRTH);
    }
    assert_eq!(parse_date(b"2024-02-29", 0), Some(10));
    assert_eq!(parse_date(b"2024-02-30", 0), None);
    assert_eq!(
        found_at("/patient/date_of_birth", "1985-04-12"),
        vec![("date_of_birth".into(), "1985-04-12".into())]
    );
    assert!(found_at("/patient/dob", "unknown").is_empty());
}

#[test]
fn stricter_table() {
    let t = action_table();
    for ty in types::ALL {
        assert_eq!(t.row(ty), Some([B, B, B, B, R]), "{ty}");
    }
    for ty in ["name", "address", "email", "phone"] {
        let row = t.row(ty).unwrap();
        assert_eq!(row, [B, B, R, R, H], "{ty}");
        assert!(!row.contains(&P), "{ty} never passes");
    }
    assert_eq!(t.row("ip_address"), Some([B, B, H, H, H]));
    // Unchanged from the default policy.
    assert_eq!(t.row("ssn"), Some([B; 5]));
    assert_eq!(t.row("api_key"), Some([B, B, B, B, R]));
}

#[test]
fn stricter_table_end_to_end() {
    let text = "Dr. Jane Smith (jane@clinic.example, 555-123-4567) saw MRN 00123456";
    let r = scan_at("/note", text, TrustLevel::Privileged);
    assert!(!r.blocked);
    let rewritten = &r.rewritten[0].value;
    assert!(rewritten.starts_with("[HASH:name:"), "{rewritten}");
    assert!(rewritten.contains("([HASH:email:"), "{rewritten}");
    assert!(rewritten.contains(", [HASH:phone:"), "{rewritten}");
    assert!(
        rewritten.ends_with("saw MRN [REDACTED:medical_record_number]"),
        "{rewritten}"
    );
    for level in [
        TrustLevel::Untrusted,
        TrustLevel::Verified,
        TrustLevel::Attested,
        TrustLevel::Trusted,
    ] {
        assert!(scan_at("/note", text, level).blocked, "{level:?}");
    }
    let r = scan_at(
        "/note",
        "Dr. Jane Smith, jane@clinic.example",
        TrustLevel::Trusted,
    );
    assert_eq!(
        r.rewritten[0].value, "[REDACTED:name], [REDACTED:email]",
        "redacted, not hashed, at TRUSTED"
    );
}

#[test]
fn default_detectors_still_apply() {
    let f = found(
        "ssn 123-45-6789, card 4111 1111 1111 1111, key ghp_0123456789abcdefghijABCDEFGHIJ012345",
    );
    let types: Vec<&str> = f.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["ssn", "credit_card", "github_token"]);
    let r = scan_at("/db/password", "hunter2", TrustLevel::Privileged);
    assert!(r.blocked);
}

#[test]
fn overrides_cannot_weaken_the_floors() {
    let cfg = |k: &'static str, v: &'static str| move |key: &str| (key == k).then(|| v.to_string());
    let mut p = policy();
    let err = p
        .configure(&cfg("action.name.privileged", "pass"))
        .unwrap_err();
    assert!(err.contains("action.name.privileged"), "{err}");
    let mut p = policy();
    assert!(
        p.configure(&cfg("action.npi", "hash")).is_err(),
        "medical types stay at redact or above"
    );
    let mut p = policy();
    assert!(p.configure(&cfg("action.email", "pass")).is_err());
    // Tightening is fine.
    let mut p = policy();
    p.configure(&cfg("action.name.privileged", "block"))
        .unwrap();
    assert_eq!(p.table().action("name", TrustLevel::Privileged), B);
}

#[test]
fn clinical_note_without_identifiers_is_clean() {
    for text in [
        "Patient reports improved sleep. Continue current dose for 2 weeks.",
        "Follow-up in 3 months; HbA1c 6.8% on 2024-03-01.",
        "Room E11, bed 4. Vitals stable: BP 120/80, HR 72.",
        "Order 1234567893 shipped on 04/12/2024.",
        "Dosage 10 mg twice daily, refill 2 of 5.",
    ] {
        let f = found(text);
        assert!(f.is_empty(), "{text:?}: {f:?}");
    }
}
