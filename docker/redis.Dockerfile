# Vigil's Redis: the Feast online store and the gateway's decision store. Only the base is chosen
# here, as a build argument, so a machine without a registry can build on its own redis 7 image
# (docker/local-base-images.sh); compose gives the command (append-only file, protected mode off).
ARG REDIS_IMAGE=redis:7.0-alpine
FROM ${REDIS_IMAGE}
