# syntax=docker/dockerfile:1

# A small C program: build with gcc, ship on a slim Debian.
ARG GCC_VERSION=13
ARG DEBIAN_RELEASE=bookworm

FROM gcc:${GCC_VERSION} AS build
WORKDIR /src
COPY Makefile ./
COPY src/ ./src/
RUN make -j"$(nproc)" CFLAGS="-O2 -Wall" \
    && strip hello \
    && ./hello --version

FROM debian:${DEBIAN_RELEASE}-slim
LABEL org.opencontainers.image.title="hello" \
      org.opencontainers.image.licenses="BSD-3-Clause"
COPY --from=build /src/hello /usr/local/bin/hello
ENTRYPOINT ["/usr/local/bin/hello"]
CMD ["--greeting", "world"]
