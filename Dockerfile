# Build
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

# Run
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/agentbus /usr/local/bin/agentbus
ENV AGENTBUS_BIND=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["agentbus"]
CMD ["serve"]
