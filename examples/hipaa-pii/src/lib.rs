//! A HIPAA-minded PII policy for agentfed.
//!
//! Our clinical agents exchange notes, referrals and scheduling requests
//! with partner sites. agentfed's default PII policy already stops SSNs,
//! card numbers and secrets and redacts e-mail addresses and phone
//! numbers for mid-level peers; we need two more things:
//!
//! 1. **Medical identifiers** the default policy does not know, reported
//!    as their own types so our audit log says exactly what was caught:
//!
//!    | type | what | anchor |
//!    |---|---|---|
//!    | `medical_record_number` | `MRN: 00123456`, `medical record number A-88231` | a context word (`MRN`, `medical record`, `chart number`, `patient id`) or a field named `mrn`, `medical_record_number`, … |
//!    | `health_plan_id` | Medicare MBI `1EG4-TE5-MK73` (validated character classes, with or without dashes), member/subscriber/policy numbers | the MBI format anywhere; other ids after `member id`, `subscriber id`, `policy number`, `insurance id`, … or in such a field |
//!    | `npi` | National Provider Identifier `1234567893` | `NPI` context or an `npi` field, **and** the NPI check digit (Luhn over `80840` + the ten digits) |
//!    | `dea_number` | DEA registration `AB1234563` | the DEA checksum, anywhere (higher confidence after `DEA`) |
//!    | `diagnosis_code` | ICD-10-CM `E11.9`, `I10`, `J45.909` | a context word (`diagnosis`, `dx`, `ICD-10`, …) up to 80 bytes before, or an `icd10`/`diagnosis_code` field |
//!    | `date_of_birth` | `DOB: 04/12/1985`, `date of birth 1985-04-12`, `born on March 3, 1990` | `DOB`, `date of birth`, `birth date`, `born (on)`, or a `dob`/`date_of_birth` field; the date must be a real calendar date |
//!
//! 2. **A stricter action table** ([`action_table`]): medical identifiers
//!    are blocked for every peer below PRIVILEGED and redacted for
//!    PRIVILEGED ones; names, addresses, e-mail addresses and phone numbers
//!    (HIPAA identifiers) are never passed — redacted at ATTESTED and
//!    TRUSTED, hashed at PRIVILEGED — and IP addresses are hashed at
//!    least. These are *floors*: an operator override that would weaken
//!    them (`action.name.privileged = "pass"`) is a configuration error and
//!    the plugin then blocks every message until it is fixed.
//!
//! | type | UNTRUSTED | VERIFIED | ATTESTED | TRUSTED | PRIVILEGED |
//! |---|---|---|---|---|---|
//! | medical types (above) | block | block | block | block | redact |
//! | name, address, email, phone | block | block | redact | redact | hash |
//! | ip_address | block | block | hash | hash | hash |
//! | everything else | as in the default policy | | | | |
//!
//! Everything else — the 14 default categories, secret-named fields,
//! overlap resolution, rewrites, overrides — is the default policy's,
//! used as a library (`agentfed-policy-pii` with `default-features =
//! false`).
#![deny(missing_docs)]

use std::sync::OnceLock;

use agentfed_guest::pii::{PiiAction, PiiPolicy, ScanRequest, ScanResult};
use agentfed_policy_pii::{ActionTable, Policy, Scanner, scan_with_host, types as base};

mod detect;

pub use detect::{
    MedicalDetector, dea_number_valid, icd10_shape, mbi_valid, npi_valid, parse_date,
};

/// The medical types this policy adds.
pub mod types {
    /// Medical record numbers.
    pub const MEDICAL_RECORD_NUMBER: &str = "medical_record_number";
    /// Health plan beneficiary numbers, including Medicare MBIs.
    pub const HEALTH_PLAN_ID: &str = "health_plan_id";
    /// National Provider Identifiers.
    pub const NPI: &str = "npi";
    /// DEA registration numbers.
    pub const DEA_NUMBER: &str = "dea_number";
    /// ICD-10 diagnosis codes.
    pub const DIAGNOSIS_CODE: &str = "diagnosis_code";
    /// Dates of birth.
    pub const DATE_OF_BIRTH: &str = "date_of_birth";

    /// All of them.
    pub const ALL: [&str; 6] = [
        MEDICAL_RECORD_NUMBER,
        HEALTH_PLAN_ID,
        NPI,
        DEA_NUMBER,
        DIAGNOSIS_CODE,
        DATE_OF_BIRTH,
    ];
}

/// The stricter action table, with floors that overrides cannot go below.
pub fn action_table() -> ActionTable {
    use PiiAction::{Block as B, Hash as H, Redact as R};
    let mut t = ActionTable::default();
    for ty in types::ALL {
        t.set(ty, [B, B, B, B, R]);
        t.set_floor(ty, R);
    }
    for ty in [base::NAME, base::ADDRESS, base::EMAIL, base::PHONE] {
        t.set(ty, [B, B, R, R, H]);
        t.set_floor(ty, H);
    }
    t.set(base::IP_ADDRESS, [B, B, H, H, H]);
    t.set_floor(base::IP_ADDRESS, H);
    t
}

/// The complete policy: every default detector plus [`MedicalDetector`],
/// with [`action_table`].
pub fn policy() -> Policy {
    Policy::new(
        Scanner::new().with_detector(MedicalDetector),
        action_table(),
    )
}

/// The plugin.
pub struct HipaaPiiPolicy;

impl PiiPolicy for HipaaPiiPolicy {
    const DESCRIPTION: &'static str =
        "HIPAA PII policy: default detectors + MRN, MBI, NPI, DEA, ICD-10, DOB; stricter actions";

    fn scan(request: ScanRequest) -> Result<ScanResult, String> {
        static POLICY: OnceLock<Result<Policy, String>> = OnceLock::new();
        scan_with_host(&POLICY, policy, request)
    }
}

agentfed_guest::export_pii_policy!(HipaaPiiPolicy);
