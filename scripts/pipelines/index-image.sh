#!/usr/bin/env bash
# Indexes a pushed module image with `deltaship index` and uploads the index to the indexes
# container, named by the image's manifest digest, so deployments can plan bundles for it.
# Usage: index-image.sh <acr>/<repo>:<tag> <storage-account>   (runs inside AzureCLI@2, logged in)
set -euo pipefail
image="$1"
account="$2"
registry="${image%%/*}"
# ACR: exchange the pipeline's Azure identity for a registry token the registry client can use.
token=$(az acr login --name "${registry%%.*}" --expose-token --output tsv --query accessToken)
export DELTASHIP_REGISTRY_USERNAME=00000000-0000-0000-0000-000000000000
export DELTASHIP_REGISTRY_PASSWORD="$token"
out=$(mktemp -d)
npx deltaship index "$image" --json --out "$out/index.json" > "$out/result.json"
digest=$(node -e 'const r=require(process.argv[1]); console.log((r.manifestDigest ?? r.image?.manifestDigest ?? "").replace(":", "-"))' "$out/result.json")
if [ -z "$digest" ]; then
  echo "index-image: deltaship index did not report the image's manifest digest" >&2
  exit 1
fi
az storage blob upload --auth-mode login --account-name "$account" --container-name indexes \
  --name "$digest.json" --file "$out/index.json" --overwrite
echo "uploaded the index of $image as indexes/$digest.json"
