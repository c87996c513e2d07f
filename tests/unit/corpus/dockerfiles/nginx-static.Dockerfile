FROM debian:bookworm-slim

LABEL maintainer="Ops Team <ops@example.org>" \
      version="1.4.2" \
      description="static site behind nginx"

ENV NGINX_VERSION=1.25.4 \
    SITE_ROOT=/usr/share/nginx/html

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx curl ca-certificates \
 # clean up to keep the layer small
 && rm -rf /var/lib/apt/lists/*

ADD https://example.org/downloads/site-${NGINX_VERSION}.tar.gz /tmp/site.tar.gz
ADD assets.tar.gz ${SITE_ROOT}/
ADD --chown=www-data:www-data conf/default.conf /etc/nginx/conf.d/default.conf
COPY ["public/index.html", "${SITE_ROOT}/"]

VOLUME ["/var/cache/nginx", "/var/log/nginx"]
EXPOSE 80/tcp 443
STOPSIGNAL SIGQUIT
HEALTHCHECK NONE
ONBUILD COPY site/ ${SITE_ROOT}/
ONBUILD RUN nginx -t
ENTRYPOINT nginx -g 'daemon off;'
