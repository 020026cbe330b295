// The names of the built-in PII categories (`PiiType`), shared by the
// guest SDK and the host: both `include!` this file next to their own
// generated `PiiType`, whose cases are the same, so the mapping exists
// once.

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
