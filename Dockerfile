# syntax=docker/dockerfile:1
# Multi-stage build: a static couponq binary on a distroless, non-root base.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/couponq ./cmd/couponq
# The mock writes its keys to /keys, a named volume in docker-compose.yml.
# Docker creates a fresh named volume with the ownership of the image's
# directory, and the image has no shell to make one, so it is made here and
# copied owned by the user below.
RUN mkdir -m 0700 /out/keys

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/couponq /usr/local/bin/couponq
COPY --from=build --chown=65532:65532 /out/keys /keys
# nonroot:nonroot of the base image, by number so that runAsNonRoot can check it.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/couponq"]
CMD ["worker"]
