# Slim runtime image for both roles: `waypoint ztunnel ...` or `waypoint waypoint ...`.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY waypoint ./waypoint
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --uid 1337 --no-create-home --shell /usr/sbin/nologin waypoint
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 1337
# 15008 HBONE, 15001 outbound capture, 15006 inbound plaintext, 15080 SOCKS5, 15021 readiness, 15020 metrics
EXPOSE 15008 15001 15006 15080 15021 15020
ENTRYPOINT ["waypoint"]
CMD ["--help"]
