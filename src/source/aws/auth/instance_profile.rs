//! `auth = "instance-profile"`: credentials of the EC2 instance's role from the instance
//! metadata service, IMDSv2 only (session token with a TTL), via the SDK's provider.
//!
//! The endpoint is the SDK's: `AWS_EC2_METADATA_SERVICE_ENDPOINT` (or the profile setting)
//! overrides `http://169.254.169.254`. Expiry-driven refresh is done by the SDK's identity cache
//! around this provider; this file only constructs it.

use aws_config::imds::credentials::ImdsCredentialsProvider;
use aws_credential_types::provider::SharedCredentialsProvider;

/// The IMDSv2 credentials provider.
pub fn provider() -> SharedCredentialsProvider {
    SharedCredentialsProvider::new(ImdsCredentialsProvider::builder().build())
}
