//! Findings, canonical type names and the detector extension point.

/// The 14 canonical PII type names reported by the built-in detectors.
///
/// Every built-in rule reports one of these, so the action table is
/// complete and auditable; see the crate documentation for the mapping of
/// extra rules (provider keys, IBAN, ITIN, …) onto them.
pub mod types {
    /// E-mail addresses.
    pub const EMAIL: &str = "email";
    /// US SSN, ITIN and other national identity numbers.
    pub const SSN: &str = "ssn";
    /// Payment cards, IBANs and other financial account numbers.
    pub const CREDIT_CARD: &str = "credit_card";
    /// Generic and provider API keys, tokens and secrets.
    pub const API_KEY: &str = "api_key";
    /// Password assignments and credentials in URLs.
    pub const PASSWORD: &str = "password";
    /// Titled person names (`Dr. Jane Smith`).
    pub const NAME: &str = "name";
    /// Street addresses.
    pub const ADDRESS: &str = "address";
    /// Telephone numbers.
    pub const PHONE: &str = "phone";
    /// IPv4 and IPv6 addresses.
    pub const IP_ADDRESS: &str = "ip_address";
    /// JSON Web Tokens.
    pub const JWT: &str = "jwt";
    /// AWS access key ids and secret access keys.
    pub const AWS_KEY: &str = "aws_key";
    /// Private keys (PEM blocks, OpenSSH, PGP, PuTTY, age).
    pub const PRIVATE_KEY: &str = "private_key";
    /// Database connection URLs that carry credentials.
    pub const DATABASE_URL: &str = "database_url";
    /// GitHub tokens.
    pub const GITHUB_TOKEN: &str = "github_token";

    /// All canonical types, in the order of the action table.
    pub const ALL: [&str; 14] = [
        SSN,
        CREDIT_CARD,
        PASSWORD,
        AWS_KEY,
        PRIVATE_KEY,
        API_KEY,
        JWT,
        DATABASE_URL,
        GITHUB_TOKEN,
        EMAIL,
        PHONE,
        IP_ADDRESS,
        NAME,
        ADDRESS,
    ];
}

/// One detection inside one string value, before an action is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finding {
    /// The reported type, e.g. [`types::EMAIL`] or a plugin's own name.
    pub pii_type: &'static str,
    /// Byte offset of the first byte of the span (a char boundary).
    pub start: usize,
    /// Byte offset just past the span (a char boundary).
    pub end: usize,
    /// How sure the detector is, in [0, 1] (see the crate docs).
    pub confidence: f32,
    /// The rule that fired, e.g. `"stripe"` or `"iban"`: for tests and
    /// debugging only, never sent to the host.
    pub rule: &'static str,
}

impl Finding {
    /// A finding of `pii_type` over `start..end`.
    pub fn new(
        pii_type: &'static str,
        start: usize,
        end: usize,
        confidence: f32,
        rule: &'static str,
    ) -> Self {
        Finding {
            pii_type,
            start,
            end,
            confidence,
            rule,
        }
    }

    /// Length of the span in bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// True for an empty span (never produced by the built-in detectors).
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// True when the two spans share at least one byte.
    pub fn overlaps(&self, other: &Finding) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// A source of findings, added to a [`Scanner`](crate::Scanner) with
/// [`Scanner::with_detector`](crate::Scanner::with_detector).
///
/// `detect` sees one string value at a time with its JSON Pointer path and
/// appends findings (byte spans on char boundaries) to `out`. It may
/// report spans that overlap other detectors' findings: the policy
/// resolves overlaps. Closures with the same signature implement it.
pub trait Detector: Send + Sync {
    /// Appends this detector's findings in `value` (found at `path`).
    fn detect(&self, path: &str, value: &str, out: &mut Vec<Finding>);
}

impl<F> Detector for F
where
    F: Fn(&str, &str, &mut Vec<Finding>) + Send + Sync,
{
    fn detect(&self, path: &str, value: &str, out: &mut Vec<Finding>) {
        self(path, value, out)
    }
}
