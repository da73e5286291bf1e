#!/usr/bin/env bash
# Prints the links to both editions of the tutorial notebook, for ./lab.
# Usage: scripts/lab-urls.sh PORT TOKEN
set -euo pipefail
port="$1" token="$2"
base="http://127.0.0.1:$port/lab/tree"
echo "   English: $base/00_transfer_learning_flowers.ipynb?token=$token"
echo "   中文:    $base/zh-CN/00_transfer_learning_flowers.ipynb?token=$token"
