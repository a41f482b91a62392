# Sourced by the embedded proofs (scripts/vqa_proof.sh, scripts/study_proof.sh), with $repo (the
# repository) and $py (its Python) set.
#
# proof_seed_dir DIR SEED: make DIR, link prompts/ and train_configs/ from the repository, and link
#   DIR/dataset/embedded to $PREPARED when set, else to output/learnability/seed_SEED/dataset/embedded
#   (shared with scripts/learnability.sh: same seed, same files; whichever runs first prepares it).
# proof_prepare SEED: in the seed's folder, `python -m xraygpt.embedded prepare` unless $PREPARED is set.
proof_seed_dir() {
  local dir="$1" seed="$2" shared
  mkdir -p "$dir/dataset"
  ln -sfn "$repo/prompts" "$dir/prompts"
  ln -sfn "$repo/train_configs" "$dir/train_configs"
  if [ -n "${PREPARED:-}" ]; then
    ln -sfn "$(cd "$PREPARED" && pwd)" "$dir/dataset/embedded"
  else
    shared="$repo/output/learnability/seed_$seed/dataset/embedded"
    mkdir -p "$shared"
    ln -sfn "$shared" "$dir/dataset/embedded"
  fi
}

proof_prepare() {
  [ -n "${PREPARED:-}" ] || "$py" -m xraygpt.embedded prepare --out dataset/embedded --seed "$1"
}
