# syntax=docker/dockerfile:1
# Multi-stage build: a static couponq binary on a distroless, non-root base.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/couponq ./cmd/couponq

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/couponq /usr/local/bin/couponq
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/couponq"]
CMD ["worker"]
