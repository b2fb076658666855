#!/usr/bin/env python3
"""Generate a large, realistic Compose file for benchmarking `config`.

Usage: gen-stack.py [N] > compose.yaml      (N defaults to 1000)

The output depends only on N, so the same N always gives the same bytes. It
uses only what Compose v1 (docker-compose 1.29) also accepts, so the same
file can be timed with both berth and docker-compose.

Every service has an image, command, environment map, one or two published
ports (unique across the file), volumes (named and bind), depends_on on
earlier services (short and long form), a healthcheck, deploy.resources,
networks and labels. Service kinds rotate through web / api / worker /
db / cache / job. Anchors and merge keys are used the way people use them.
"""

import random
import sys

KINDS = ["web", "api", "worker", "db", "cache", "job"]
TEAMS = ["payments", "search", "identity", "catalog", "billing", "growth", "infra", "data"]
NETWORKS = ["frontend", "backend", "data"] + [f"team-{t}" for t in TEAMS]

IMAGES = {
    "web": ["nginx:1.25-alpine", "nginx:1.24", "nginx:mainline-alpine"],
    "api": ["ghcr.io/example/{team}-api:{ver}", "registry.example.com/{team}/api:{ver}"],
    "worker": ["ghcr.io/example/{team}-worker:{ver}", "registry.example.com/{team}/worker:{ver}"],
    "db": ["postgres:16-alpine", "postgres:15", "postgres:16.2"],
    "cache": ["redis:7-alpine", "redis:7.2", "redis:6.2-alpine"],
    "job": ["ghcr.io/example/{team}-jobs:{ver}", "alpine:3.19"],
}


def q(s):
    """Quote a scalar for YAML (double quotes, escaped)."""
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def service(i, name, kind, team, rng, earlier, healthy):
    ver = f"{rng.randint(1, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}"
    image = rng.choice(IMAGES[kind]).format(team=team, ver=ver)
    out = [f"  {name}:", "    <<: *service-defaults", f"    image: {image}"]

    # command: string and list forms
    if kind == "web":
        out.append("    command: [\"nginx\", \"-g\", \"daemon off;\"]")
    elif kind == "api":
        out.append(f"    command: [\"gunicorn\", \"--bind\", \"0.0.0.0:8000\", \"--workers\", \"{rng.randint(2, 8)}\", \"{team}.wsgi\"]")
    elif kind == "worker":
        out.append(f"    command: celery -A {team} worker --concurrency={rng.randint(1, 4)} --loglevel=info")
    elif kind == "db":
        out.append(f"    command: [\"postgres\", \"-c\", \"max_connections={rng.choice([100, 200, 400])}\"]")
    elif kind == "cache":
        out.append(f"    command: redis-server --maxmemory {rng.choice([64, 128, 256])}mb --maxmemory-policy allkeys-lru")
    else:
        out.append(f"    command: [\"sh\", \"-c\", \"run-job --name {name} --every {rng.randint(1, 60)}m\"]")

    # environment (map form), merged with the shared defaults
    out.append("    environment:")
    out.append("      <<: *common-env")
    out.append(f"      SERVICE_NAME: {name}")
    out.append(f"      TEAM: {team}")
    out.append(f"      PORT: {q(8000 + i % 1000)}")
    out.append(f"      LOG_LEVEL: ${{LOG_LEVEL_{i % 7}:-info}}")
    if earlier:
        dep = earlier[-1]
        out.append(f"      UPSTREAM_URL: http://{dep}:8000")
    out.append(f"      FEATURE_FLAGS: {q(','.join(rng.sample(['a', 'b', 'c', 'd', 'e', 'f'], 3)))}")
    out.append(f"      REPLICA_HINT: {q(rng.randint(1, 5))}")

    # ports: unique published ports across the whole file
    out.append("    ports:")
    out.append(f"      - \"{20000 + 2 * i}:{8000 if kind != 'web' else 80}\"")
    if kind in ("web", "api"):
        out.append(f"      - target: {9100 if kind == 'api' else 443}")
        out.append(f"        published: {20000 + 2 * i + 1}")
        out.append("        protocol: tcp")
        out.append("        mode: host")

    # volumes: named for stateful kinds, binds for the rest
    out.append("    volumes:")
    if kind in ("db", "cache"):
        out.append(f"      - {name}-data:/var/lib/{kind}")
    out.append(f"      - ./config/{team}/{kind}.conf:/etc/{kind}/{kind}.conf:ro")
    if kind in ("api", "worker", "job"):
        out.append("      - type: tmpfs")
        out.append("        target: /tmp")

    # depends_on: a few earlier services, short or long syntax
    if earlier:
        deps = sorted(set(rng.sample(earlier[-20:], min(len(earlier), rng.randint(1, 3)))))
        if rng.random() < 0.5:
            out.append("    depends_on:")
            out.extend(f"      - {d}" for d in deps)
        else:
            out.append("    depends_on:")
            for d in deps:
                cond = "service_healthy" if d in healthy else "service_started"
                out.append(f"      {d}:")
                out.append(f"        condition: {cond}")

    # healthcheck (jobs have none: their condition is service_started)
    if kind != "job":
        if kind == "db":
            test = '["CMD-SHELL", "pg_isready -U postgres || exit 1"]'
        elif kind == "cache":
            test = '["CMD", "redis-cli", "ping"]'
        else:
            test = f'["CMD", "wget", "-q", "--spider", "http://localhost:{8000 if kind != "web" else 80}/healthz"]'
        out.append("    healthcheck:")
        out.append(f"      test: {test}")
        out.append("      <<: *healthcheck-timing")
        out.append(f"      start_period: {rng.choice(['10s', '30s', '1m', '1m30s'])}")
        healthy.add(name)

    # deploy.resources
    out.append("    deploy:")
    out.append(f"      replicas: {1 if kind in ('db', 'cache') else rng.randint(1, 4)}")
    out.append("      resources:")
    out.append("        limits:")
    out.append(f"          cpus: '{rng.choice(['0.25', '0.5', '1', '2'])}'")
    out.append(f"          memory: {rng.choice(['128M', '256M', '512M', '1G'])}")
    out.append("        reservations:")
    out.append(f"          memory: {rng.choice(['32M', '64M', '128M'])}")

    # networks: list or map form
    nets = ["backend"]
    if kind == "web":
        nets.append("frontend")
    if kind in ("db", "cache", "worker"):
        nets.append("data")
    nets.append(f"team-{team}")
    if rng.random() < 0.5:
        out.append("    networks:")
        out.extend(f"      - {n}" for n in nets)
    else:
        out.append("    networks:")
        for n in nets:
            out.append(f"      {n}:")
            if n == f"team-{team}":
                out.append(f"        aliases: [{name}.{team}.internal]")

    # labels (map form)
    out.append("    labels:")
    out.append("      <<: *common-labels")
    out.append(f"      com.example.team: {team}")
    out.append(f"      com.example.kind: {kind}")
    out.append(f"      com.example.index: {q(i)}")
    return out, kind in ("db", "cache")


def generate(n):
    rng = random.Random(20240601)  # fixed seed: output depends only on n
    lines = [
        f"# Generated by bench/gen-stack.py {n}: {n} services. Do not edit by hand.",
        "",
        "x-logging: &logging",
        "  driver: json-file",
        "  options:",
        "    max-size: \"10m\"",
        "    max-file: \"3\"",
        "",
        "x-service-defaults: &service-defaults",
        "  restart: unless-stopped",
        "  logging: *logging",
        "  stop_grace_period: 30s",
        "",
        "x-common-env: &common-env",
        "  TZ: UTC",
        "  APP_ENV: ${APP_ENV:-production}",
        "  OTEL_EXPORTER_OTLP_ENDPOINT: http://otel-collector:4317",
        "",
        "x-common-labels: &common-labels",
        "  com.example.stack: bench",
        "  com.example.managed-by: berth",
        "",
        "x-healthcheck-timing: &healthcheck-timing",
        "  interval: 30s",
        "  timeout: 5s",
        "  retries: 3",
        "",
        "services:",
    ]
    earlier = []
    healthy = set()
    volumes = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        team = TEAMS[(i // len(KINDS)) % len(TEAMS)]
        name = f"{team}-{kind}-{i:04d}"
        svc, has_volume = service(i, name, kind, team, rng, earlier, healthy)
        lines.extend(svc)
        if has_volume:
            volumes.append(name)
        earlier.append(name)

    lines += ["", "networks:"]
    for net in NETWORKS:
        lines.append(f"  {net}:")
        if net == "data":
            lines.append("    internal: true")
        if net == "backend":
            lines.append("    ipam:")
            lines.append("      config:")
            lines.append("        - subnet: 10.42.0.0/16")
        if net.startswith("team-"):
            lines.append("    labels:")
            lines.append(f"      com.example.team: {net[5:]}")

    lines += ["", "volumes:"]
    if volumes:
        for v in volumes:
            lines.append(f"  {v}-data:")
            lines.append("    labels:")
            lines.append("      com.example.backup: daily")
    else:
        lines[-1] = "volumes: {}"
    return "\n".join(lines) + "\n"


def main():
    if len(sys.argv) > 2:
        sys.exit("usage: gen-stack.py [N]")
    n = int(sys.argv[1]) if len(sys.argv) == 2 else 1000
    if not 1 <= n <= 20000:
        sys.exit("N must be between 1 and 20000 (published ports start at 20000)")
    sys.stdout.write(generate(n))


if __name__ == "__main__":
    main()
