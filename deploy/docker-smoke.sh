#!/usr/bin/env bash
# Builds the image from deploy/Dockerfile and proves it works as
# docs/deploy.md says, on a machine with a Docker engine (CI does not run it):
#
#   * keys and a development certificate are made by the image itself into a
#     volume owned by its uid, mounted read-only at /run/secrets/fieldseal;
#   * deploy/docker/config.yaml is mounted at /etc/fieldseal/config.yaml and
#     the image's own CMD runs it, as uid 10001;
#   * the HEALTHCHECK (`fieldseal healthcheck`) turns the container healthy;
#   * /healthz and /readyz answer on the admin port published on the host's
#     loopback only, and the TLS listener answers with the security headers;
#   * `docker stop` drains and the container exits 0.
#
# Usage: deploy/docker-smoke.sh [IMAGE_TAG]      needs docker and curl
set -euo pipefail
cd "$(dirname "$0")/.."

image=${1:-fieldseal:smoke}
name=fieldseal-smoke-$$
secrets=fieldseal-smoke-secrets-$$

fail() {
    echo "docker-smoke: FAIL: $*" >&2
    docker logs "$name" 2>&1 | tail -n 40 >&2 || true
    exit 1
}
cleanup() {
    docker rm -f "$name" >/dev/null 2>&1 || true
    docker volume rm "$secrets" >/dev/null 2>&1 || true
}
trap cleanup EXIT

command -v docker >/dev/null || { echo "docker-smoke: docker not found" >&2; exit 2; }
command -v curl >/dev/null || { echo "docker-smoke: curl not found" >&2; exit 2; }
docker info >/dev/null 2>&1 || { echo "docker-smoke: no Docker engine reachable" >&2; exit 2; }

echo "== build $image"
docker build -f deploy/Dockerfile -t "$image" .

echo "== secrets volume (made by the image, owned by uid 10001, mode 0600)"
docker volume create "$secrets" >/dev/null
docker run --rm --user 0:0 -v "$secrets:/s" --entrypoint /bin/sh "$image" -c '
    set -eu
    fieldseal cert --self-signed --out /s --name localhost --name 127.0.0.1
    fieldseal keygen --out /s/k2.key
    chown 10001:10001 /s/*
    chmod 0600 /s/*'

echo "== check the config inside the image"
docker run --rm \
    -v "$PWD/deploy/docker/config.yaml:/etc/fieldseal/config.yaml:ro" \
    -v "$secrets:/run/secrets/fieldseal:ro" \
    "$image" check --config /etc/fieldseal/config.yaml \
    || fail "fieldseal check refused deploy/docker/config.yaml"

echo "== run as documented"
docker run -d --name "$name" --stop-timeout 30 \
    -p 127.0.0.1::8443 -p 127.0.0.1::9901 \
    -v "$PWD/deploy/docker/config.yaml:/etc/fieldseal/config.yaml:ro" \
    -v "$secrets:/run/secrets/fieldseal:ro" \
    "$image" >/dev/null

uid=$(docker exec "$name" id -u) || fail "docker exec id -u"
[ "$uid" = 10001 ] || fail "runs as uid $uid, not 10001"

# Host ports Docker picked, on 127.0.0.1 only.
admin=$(docker port "$name" 9901/tcp | head -n 1)
https=$(docker port "$name" 8443/tcp | head -n 1)
case "$admin" in 127.0.0.1:*) ;; *) fail "admin port published as $admin" ;; esac

echo "== wait for the HEALTHCHECK (up to 120 s)"
status=starting
for _ in $(seq 1 60); do
    status=$(docker inspect -f '{{.State.Health.Status}}' "$name")
    [ "$status" = healthy ] && break
    [ "$(docker inspect -f '{{.State.Running}}' "$name")" = true ] || fail "container exited"
    sleep 2
done
[ "$status" = healthy ] || fail "health status is $status"

echo "== admin listener from the host ($admin)"
curl -fsS "http://$admin/healthz" | grep -q '"ok"' || fail "/healthz"
curl -fsS "http://$admin/readyz" >/dev/null || fail "/readyz"
curl -fsS "http://$admin/metrics" | grep -q '^fieldseal_' || fail "/metrics"

echo "== TLS listener from the host ($https)"
# No backend named `legacy` runs here: a routed request is a 502 from the
# proxy itself, with the security headers; an unrouted one is a 404.
headers=$(curl -sk -o /dev/null -D - "https://$https/api/users/1")
echo "$headers" | head -n 1 | grep -q ' 502' || fail "expected 502, got: $(echo "$headers" | head -n 1)"
echo "$headers" | grep -qi '^strict-transport-security:' || fail "no HSTS header"
code=$(curl -sk -o /dev/null -w '%{http_code}' "https://$https/nothing-routes-here")
[ "$code" = 404 ] || fail "unrouted path answered $code"

echo "== docker stop drains and exits 0"
docker stop "$name" >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
[ "$code" = 0 ] || fail "exit code $code after docker stop"

echo "docker-smoke: ok ($image)"
