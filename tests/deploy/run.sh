#!/usr/bin/env bash
# Checks of the deployment kit in deploy/ (deploy/README.md, "How the kit is checked").
# scripts/test.sh runs this after the interop tests; it can also be run alone once
# target/debug/tollgate is built and the interop virtualenv (.venv-interop) exists.
# It installs what is missing on a fresh Debian machine, then runs each tool made for each piece.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=${VENV:-.venv-interop}
export TOLLGATE_BIN=${TOLLGATE_BIN:-target/debug/tollgate}
REQS=tests/deploy/requirements.txt
# The Kubernetes versions the manifests are validated against: the oldest with the preStop
# `sleep` action on by default, and the newest kubernetes-validate knows.
K8S_VERSIONS=(1.30.0 1.37.0)

# Debian packages: promtool (prometheus), systemd-analyze and systemd-sysusers (systemd),
# busybox (busybox-static: runs the image's and the task's health-check commands as written).
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v busybox >/dev/null 2>&1 || missing+=(busybox-static)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
command -v dash >/dev/null 2>&1 || missing+=(dash)
[ -x /bin/kill ] || missing+=(procps)
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python packages, into the interop virtualenv; reinstalled only when requirements change.
stamp="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [ "$(cat "$VENV/.deploy-requirements.sha256" 2>/dev/null)" != "$stamp" ] ||
  ! "$VENV/bin/python" -c 'import kubernetes_validate, dockerfile_parse, yaml' 2>/dev/null ||
  [ ! -x "$VENV/bin/hadolint" ]; then
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/pip" install -q -r "$REQS"
  echo "$stamp" >"$VENV/.deploy-requirements.sha256"
fi

step() { printf '\n== deploy: %s\n' "$*"; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

step "Dockerfile: hadolint"
"$VENV/bin/hadolint" deploy/Dockerfile && echo "deploy/Dockerfile: no findings"

step "systemd: systemd-sysusers, systemd-analyze verify, systemd-analyze security"
# A scratch root holding systemd's own units, the unit under test, the binaries its Exec*=
# lines name (verify checks they exist) and the user its sysusers.d entry creates.
root="$tmp/root"
mkdir -p "$root/usr/lib/systemd" "$root/usr/lib/sysusers.d" "$root/etc/systemd/system" \
  "$root/usr/local/bin" "$root/bin"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
cp deploy/systemd/tollgate.service "$root/etc/systemd/system/"
cp deploy/systemd/tollgate.sysusers "$root/usr/lib/sysusers.d/tollgate.conf"
ln "$TOLLGATE_BIN" "$root/usr/local/bin/tollgate" 2>/dev/null || cp "$TOLLGATE_BIN" "$root/usr/local/bin/tollgate"
cp /bin/kill "$root/bin/kill"
out="$(systemd-sysusers --root="$root" 2>&1)" || { echo "$out"; exit 1; }
grep -q '^tollgate:' "$root/etc/passwd" || { echo "$out"; echo "sysusers.d entry created no user"; exit 1; }
echo "tollgate.sysusers: $(grep '^tollgate:' "$root/etc/passwd")"
# verify exits 0 on many problems (unknown keys, bad values) and only prints them: any output
# is a failure.
out="$(systemd-analyze verify --root="$root" tollgate.service 2>&1)" || { echo "$out"; exit 1; }
if [ -n "$out" ]; then echo "$out"; echo "systemd-analyze verify printed warnings"; exit 1; fi
echo "tollgate.service: verify clean"
# The exposure score must stay low (1.1 today; 10 is fully exposed): fail above 2.0.
systemd-analyze security --offline=yes --root="$root" --threshold=20 tollgate.service | tail -1

step "Prometheus: promtool check config, check rules, test rules"
promtool check config deploy/prometheus/prometheus.yml
# Debian's promtool is built without Kubernetes discovery: check prometheus-kubernetes.yml with
# its kubernetes_sd_configs block swapped for a file_sd one (the relabelling is what is checked).
mkdir -p "$tmp/prom/rules"
cp deploy/prometheus/rules/tollgate.rules.yml "$tmp/prom/rules/"
grep -q '^    kubernetes_sd_configs:$' deploy/prometheus/prometheus-kubernetes.yml
sed -e 's/^    kubernetes_sd_configs:$/    file_sd_configs:/' \
  -e "s|^      - role: pod$|      - files: [$tmp/prom/targets.json]|" \
  deploy/prometheus/prometheus-kubernetes.yml >"$tmp/prom/prometheus-kubernetes.yml"
echo '[]' >"$tmp/prom/targets.json"
promtool check config "$tmp/prom/prometheus-kubernetes.yml"
promtool check rules deploy/prometheus/rules/tollgate.rules.yml
promtool test rules deploy/prometheus/tests/tollgate.test.yml

step "Kubernetes: kubernetes-validate --strict (${K8S_VERSIONS[*]})"
for v in "${K8S_VERSIONS[@]}"; do
  "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" deploy/kubernetes/*.yaml
  echo "deploy/kubernetes/*.yaml: valid against Kubernetes $v (strict)"
done

step "pytest tests/deploy (structure, live binary, metric names)"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/deploy
