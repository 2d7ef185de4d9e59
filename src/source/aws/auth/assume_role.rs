//! STS `AssumeRole` on top of a base identity: role ARN, optional external id, session name and
//! length, and the STS endpoint and region the calls go to.
//!
//! The returned provider calls STS each time the SDK's identity cache (around the Secrets
//! Manager client) finds the session close to expiry, so sessions are renewed before they
//! lapse. It does not validate the settings: config validation did.

use std::time::Duration;

use aws_config::sts::AssumeRoleProvider;
use aws_credential_types::provider::SharedCredentialsProvider;

/// `[sources.NAME.assume_role]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRoleConfig {
    /// Role to assume.
    pub role_arn: String,
    /// `sts:ExternalId`, when the trust policy asks for one.
    pub external_id: Option<String>,
    /// Role session name (`{hostname}` already substituted).
    pub session_name: String,
    /// Session length.
    pub duration: Duration,
    /// STS endpoint override.
    pub sts_endpoint: Option<String>,
    /// Region STS requests are signed for.
    pub sts_region: String,
}

/// A provider assuming `role` with the base identity and STS settings in `sts`.
pub async fn provider(
    role: &AssumeRoleConfig,
    sts: &aws_config::SdkConfig,
) -> SharedCredentialsProvider {
    let mut builder = AssumeRoleProvider::builder(role.role_arn.clone())
        .session_name(role.session_name.clone())
        .session_length(role.duration)
        .configure(sts);
    if let Some(external_id) = &role.external_id {
        builder = builder.external_id(external_id.clone());
    }
    SharedCredentialsProvider::new(builder.build().await)
}
