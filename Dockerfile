# Multi-stage build of a static valkey-lock-proxy binary on a minimal, non-root base image.
# The build steps are the README's: go build with CGO disabled.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/valkey-lock-proxy .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/valkey-lock-proxy /usr/local/bin/valkey-lock-proxy
COPY config.example.yaml /etc/valkey-lock-proxy/config.yaml
VOLUME ["/etc/valkey-lock-proxy"]
EXPOSE 6380
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/valkey-lock-proxy", "--config", "/etc/valkey-lock-proxy/config.yaml"]
