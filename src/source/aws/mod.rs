//! The AWS sources (`aws-secretsmanager`, `aws-ssm`, `aws-s3`) and what they share: the
//! credentials (`auth`) every AWS client signs with.
//!
//! Each kind owns its calls and its error mapping; none of them caches or checks access.

pub mod auth;
pub(crate) mod batch;
pub(crate) mod calls;
pub mod config;
// aws-credentials: the role profiles vended to local callers.
pub mod credentials;
pub mod credentials_config;
pub mod s3;
pub mod secretsmanager;
pub mod ssm;
