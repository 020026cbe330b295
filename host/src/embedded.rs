//! The default policies, compiled from `policies/` by the build script and
//! embedded in the binary.

use crate::plugin::PluginKind;

include!(concat!(env!("OUT_DIR"), "/embedded_policies.rs"));

/// The embedded default policy of `kind`.
pub fn default_name(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Trust => "default-trust",
        PluginKind::Pii => "default-pii",
        PluginKind::Spend => "default-spend",
        PluginKind::Handler => "default-handler",
    }
}

/// The bytes of an embedded policy, by name.
pub fn bytes(name: &str) -> Option<&'static [u8]> {
    EMBEDDED
        .iter()
        .find(|(embedded, _)| *embedded == name)
        .map(|(_, bytes)| *bytes)
}

/// Resolves a name given on the command line or in a config (`default`,
/// `default-pii`, …) to an embedded policy for `kind`.
pub fn resolve(kind: PluginKind, name: &str) -> Option<&'static str> {
    let wanted = if name == "default" {
        default_name(kind)
    } else {
        name
    };
    EMBEDDED
        .iter()
        .map(|(embedded, _)| *embedded)
        .find(|embedded| *embedded == wanted)
}
