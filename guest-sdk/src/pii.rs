//! Everything a PII plugin needs: `use agentfed_guest::pii::*;`.

pub use crate::bindings::pii::exports::agentfed::plugin::pii_policy::{
    Detection, PiiAction, PiiType, RewrittenValue, ScanRequest, ScanResult,
};
pub use crate::{Direction, PluginMetadata, StringValue, TrustLevel, host, last_path_segment};

/// A PII policy. Export it with [`export_pii_policy!`](crate::export_pii_policy).
pub trait PiiPolicy {
    /// One line shown by `agentfed plugin list`.
    const DESCRIPTION: &'static str;

    /// Scans every string value of one message and decides, per finding,
    /// whether it passes, is redacted, hashed, or blocks the message.
    fn scan(request: ScanRequest) -> Result<ScanResult, String>;
}

/// Exports a [`PiiPolicy`] implementation as the component's PII world.
#[macro_export]
macro_rules! export_pii_policy {
    ($policy:ty) => {
        // Exports exist only in the component; native builds (unit tests)
        // still type-check the implementation.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::bindings::pii as __bindings;
            struct __AgentfedPiiExport;
            impl __bindings::exports::agentfed::plugin::pii_policy::Guest for __AgentfedPiiExport {
                fn scan(
                    request: $crate::pii::ScanRequest,
                ) -> ::core::result::Result<$crate::pii::ScanResult, ::std::string::String>
                {
                    <$policy as $crate::pii::PiiPolicy>::scan(request)
                }
            }
            impl __bindings::Guest for __AgentfedPiiExport {
                fn metadata() -> $crate::PluginMetadata {
                    $crate::PluginMetadata {
                        name: ::std::string::String::from(env!("CARGO_PKG_NAME")),
                        version: ::std::string::String::from(env!("CARGO_PKG_VERSION")),
                        description: ::std::string::String::from(
                            <$policy as $crate::pii::PiiPolicy>::DESCRIPTION,
                        ),
                    }
                }
            }
    __bindings::__export_pii_world!(__AgentfedPiiExport with_types_in __bindings);
        };
    };
}

/// The built-in categories and their snake_case names.
const PII_TYPE_NAMES: [(&str, PiiTypeCase); 14] = [
    ("email", PiiTypeCase::Email),
    ("ssn", PiiTypeCase::Ssn),
    ("credit_card", PiiTypeCase::CreditCard),
    ("api_key", PiiTypeCase::ApiKey),
    ("password", PiiTypeCase::Password),
    ("name", PiiTypeCase::Name),
    ("address", PiiTypeCase::Address),
    ("phone", PiiTypeCase::Phone),
    ("ip_address", PiiTypeCase::IpAddress),
    ("jwt", PiiTypeCase::Jwt),
    ("aws_key", PiiTypeCase::AwsKey),
    ("private_key", PiiTypeCase::PrivateKey),
    ("database_url", PiiTypeCase::DatabaseUrl),
    ("github_token", PiiTypeCase::GithubToken),
];

#[derive(Clone, Copy)]
enum PiiTypeCase {
    Email,
    Ssn,
    CreditCard,
    ApiKey,
    Password,
    Name,
    Address,
    Phone,
    IpAddress,
    Jwt,
    AwsKey,
    PrivateKey,
    DatabaseUrl,
    GithubToken,
}

impl PiiTypeCase {
    fn to_type(self) -> PiiType {
        match self {
            PiiTypeCase::Email => PiiType::Email,
            PiiTypeCase::Ssn => PiiType::Ssn,
            PiiTypeCase::CreditCard => PiiType::CreditCard,
            PiiTypeCase::ApiKey => PiiType::ApiKey,
            PiiTypeCase::Password => PiiType::Password,
            PiiTypeCase::Name => PiiType::Name,
            PiiTypeCase::Address => PiiType::Address,
            PiiTypeCase::Phone => PiiType::Phone,
            PiiTypeCase::IpAddress => PiiType::IpAddress,
            PiiTypeCase::Jwt => PiiType::Jwt,
            PiiTypeCase::AwsKey => PiiType::AwsKey,
            PiiTypeCase::PrivateKey => PiiType::PrivateKey,
            PiiTypeCase::DatabaseUrl => PiiType::DatabaseUrl,
            PiiTypeCase::GithubToken => PiiType::GithubToken,
        }
    }
}

impl PiiType {
    /// The category for a snake_case name: a built-in case when the name
    /// is one, `other(name)` otherwise.
    pub fn from_name(name: &str) -> PiiType {
        PII_TYPE_NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, case)| case.to_type())
            .unwrap_or_else(|| PiiType::Other(name.to_string()))
    }

    /// The snake_case name (`credit_card`, or the `other` name).
    pub fn as_str(&self) -> &str {
        match self {
            PiiType::Email => "email",
            PiiType::Ssn => "ssn",
            PiiType::CreditCard => "credit_card",
            PiiType::ApiKey => "api_key",
            PiiType::Password => "password",
            PiiType::Name => "name",
            PiiType::Address => "address",
            PiiType::Phone => "phone",
            PiiType::IpAddress => "ip_address",
            PiiType::Jwt => "jwt",
            PiiType::AwsKey => "aws_key",
            PiiType::PrivateKey => "private_key",
            PiiType::DatabaseUrl => "database_url",
            PiiType::GithubToken => "github_token",
            PiiType::Other(name) => name,
        }
    }
}

impl std::fmt::Display for PiiType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for PiiType {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for PiiType {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
