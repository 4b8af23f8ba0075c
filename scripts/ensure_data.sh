#!/usr/bin/env bash
# Makes the offline Fashion-MNIST idx files available (Debian's dataset-fashion-mnist), or says why not.
set -u
DIR=/usr/share/datasets/fashion-mnist
[[ -d "$DIR" ]] && exit 0
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "installing Debian's dataset-fashion-mnist into $DIR"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
    || echo "notice: apt-get could not install dataset-fashion-mnist; torchvision will try to download Fashion-MNIST"
else
  echo "notice: $DIR is absent and this is not root on Debian; torchvision will download Fashion-MNIST when needed"
fi
exit 0
