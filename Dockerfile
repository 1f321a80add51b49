# prescale container image: multi-stage build (compile in the Rust image, run
# in a slim Debian with only the runtime libraries).
#   docker build -t prescale:local .
#   docker run --rm prescale:local --help
FROM rust:1.95-bookworm AS build
# librdkafka is built from source by rdkafka (bundled); native TLS needs OpenSSL headers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# `aws`: the AWS actuators and producer (prescale actuate asg|batch, prescale ingest batch).
ARG PRESCALE_FEATURES=aws
RUN cargo build --release --locked --bin prescale --features "$PRESCALE_FEATURES" \
    && install -m 0755 target/release/prescale /usr/local/bin/prescale

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/prescale --create-home prescale
COPY --from=build /usr/local/bin/prescale /usr/local/bin/prescale
USER prescale
WORKDIR /var/lib/prescale
ENTRYPOINT ["prescale"]
CMD ["--help"]
