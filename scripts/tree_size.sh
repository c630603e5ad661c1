# Sourced by scripts/gpu_carry.sh and scripts/gpu_stand_in.sh (from the repository root):
# travelling_tree_bytes prints the bytes of the working tree a device call carries besides its
# carried folders: the tracked files and the untracked ones git does not ignore, as they are now.
# Tracked files taken out of the working tree (gpu_stand_in.sh --drop-results) do not travel:
# git still lists them, du leaves them out of its total and fails, which is not an error here.
travelling_tree_bytes() {
    (git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null || true) | tail -1 | cut -f1
}
