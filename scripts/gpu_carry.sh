#!/usr/bin/env bash
# Make .gpu2/ (git-ignored): what the project's GPU calls need on the lent GPU machine
# beyond that machine's image (Python 3.12, torch+cu130, transformers, peft, accelerate,
# pyarrow, tokenizers, matplotlib), for the device tool's `carry: [".gpu2"]`:
#   .gpu2/site/          python-chess and loguru (pure Python): PYTHONPATH=$PWD/.gpu2/site:$PWD
#   .gpu2/stockfish.xz   with --stockfish: this machine's Stockfish (Debian's x86-64 build,
#                        21 MB), for self-play and Stockfish opponents (scripts/bundled_gpu.py);
#                        with --split, in parts (stockfish.xz.part-NN-of-MM) spread over the
#                        folders with the sets, since 21 MB and the tree no longer fit one call
#   with --gpu-libs:     bitsandbytes (its CUDA 13.0 library only: the whole wheel is 43 MB)
#                        and liger-kernel in site/, and .gpu2/tokenizer, the real Mistral-7B
#                        tokenizer as a Hugging Face folder (the fast-path and QLoRA benchmarks:
#                        --tokenizer .gpu2/tokenizer)
#   with --games:        the self-play sets kept in the repository's history (datasets/README.md:
#                        each was committed, then removed from the tree so that GPU calls do not
#                        carry it), unpacked from the commits that added them to .gpu2/datasets/
#                        (GAMES='.gpu2/datasets/*' for bundled_gpu.py train); --games NAME[,NAME...]
#                        (selfplay-20) takes those sets only, --games COMMIT[,...] every set in
#                        those commits' trees. All sets (D 24 MB,
#                        E 12 MB) with the 40 MB tree are more than one call may carry.
#   with --pack:         each set of --games packed into .gpu2/datasets/NAME.mcg (xz, format version 2:
#                        ~111 bytes a game instead of ~186; training/packgames.py), about 1.7 times
#                        the games a call carries; bundled_gpu.py builds from GAMES='.gpu2/datasets/*'
#                        (dataset build decodes .mcg files in its workers).
#                        A packed copy kept in the history (datasets/packed/NAME.mcg) is taken as it
#                        is, with no packing (F, K, L, M and N: 1 s instead of 12.5 minutes), the
#                        newest copy where there are several (F-O: version 2 since session 15);
#                        --repack makes a version 1 copy (a byte a move, decoded 3 times slower on
#                        the GPU machine's slow cores) version 2 here (about 3 ms a game on this
#                        machine's 2 cores; 36% more bytes).
#   with --split MB:     more packed sets than one call carries: the sets are spread over .gpu2,
#                        .gpu3, ... (git-ignored, /.gpu*/), none holding more than MB megabytes with
#                        what else it holds (e.g. --split 18: a call carries 64 MiB with the ~48 MB
#                        tree). Call k carries [".gpuK"] (the earlier folders stay on the warm
#                        machine), the last one trains with GAMES='.gpu*/datasets/*'.
# A new session's checkout starts without .gpu2: run this before the first GPU call.
# Mind the 64 MiB a call may carry: the tracked tree is about 40 MB (the bundled model).
#   bash scripts/gpu_carry.sh [--stockfish] [--gpu-libs] [--games [NAME|COMMIT[,...]] [--pack [--repack]]] [--split MB]
set -euo pipefail
cd "$(dirname "$0")/.."
stockfish=0 libs=0 games="" pack=0 repack=0 split=0
while [ $# -gt 0 ]; do
    case "$1" in
        --stockfish) stockfish=1 ;;
        --gpu-libs) libs=1 ;;
        --pack) pack=1 ;;
        --repack) repack=1 ;;
        --split)
            [ $# -gt 1 ] && [ "$2" -gt 0 ] 2>/dev/null || { echo "--split needs a size in MB (e.g. --split 18)" >&2; exit 2; }
            split=$2; shift ;;
        --games)
            games=auto
            if [ $# -gt 1 ] && [ "${2#--}" = "$2" ]; then games=$2; shift; fi ;;
        *) echo "unknown option $1 (use --stockfish, --gpu-libs, --games [NAME|COMMIT[,...]], --pack, --repack, --split MB)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$repack" = 1 ] && [ "$pack" = 0 ]; then
    echo "--repack makes the packed copies of --pack version 2: use it with --pack" >&2; exit 2
fi
mkdir -p .gpu2
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python

rm -rf .gpu2/site
# The versions pyproject.toml asks for; pure Python, so what is built here runs on Python 3.12 there.
"$py" -m pip install -q --no-deps --no-compile --target .gpu2/site "chess>=1.11" "loguru>=0.7"

if [ "$stockfish" = 1 ]; then
    sf=${STOCKFISH_PATH:-$(command -v stockfish || echo /usr/games/stockfish)}
    [ -x "$sf" ] || { echo "no Stockfish at $sf (apt-get install stockfish, or set STOCKFISH_PATH)" >&2; exit 1; }
    rm -f .gpu2/stockfish.xz.part-*
    [ -s .gpu2/stockfish.xz ] || { xz -6 -T0 -c "$sf" > .gpu2/stockfish.xz.tmp && mv .gpu2/stockfish.xz.tmp .gpu2/stockfish.xz; }
    if [ "$split" -gt 0 ]; then
        # 21 MB with the ~48 MB tree is more than one call carries: parts of half a folder
        # (stockfish.xz.part-00-of-03, ...), spread over the folders like the sets below;
        # bundled_gpu.py joins them once every part is on the machine.
        split -b $((split * 500000)) -d -a 2 .gpu2/stockfish.xz .gpu2/stockfish.xz.part-
        n=$(ls .gpu2/stockfish.xz.part-* | wc -l)
        for p in .gpu2/stockfish.xz.part-*; do mv "$p" "$p-of-$(printf %02d "$n")"; done
        rm .gpu2/stockfish.xz
    fi
else
    rm -f .gpu2/stockfish.xz .gpu2/stockfish.xz.part-*
fi

if [ "$libs" = 1 ]; then
    wheels=$(mktemp -d)
    # The versions the GPU runs so far used (benchmarks/results/*_h100.json name them).
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        -d "$wheels" bitsandbytes==0.50.2 liger-kernel==0.8.5
    for w in "$wheels"/*.whl; do (cd .gpu2/site && unzip -oq "$w"); done
    # torch there is built for CUDA 13.0: keep that library, drop the other CUDA and ROCm builds.
    find .gpu2/site/bitsandbytes -maxdepth 1 -name 'libbitsandbytes_*.so' \
        ! -name 'libbitsandbytes_cuda130.so' ! -name 'libbitsandbytes_cpu.so' -delete
    rm -rf "$wheels" .gpu2/tokenizer
    "$py" -c "from engine.tiny import write_mistral_tokenizer; write_mistral_tokenizer('.gpu2/tokenizer')"
else
    rm -rf .gpu2/tokenizer  # .gpu2 holds what the options ask for, so the carry is no larger
fi

rm -rf .gpu2/datasets
if [ -n "$games" ]; then
    if [ "$games" = auto ]; then
        # The commits that added a set's manifest: found by content, so a rebase that changes
        # the hashes does not lose them.
        commits=$(git log --diff-filter=A --format=%H -- 'datasets/*/manifest.json')
        [ -n "$commits" ] || { echo "no self-play set in the history (datasets/*/manifest.json)" >&2; exit 1; }
        picks=""
        for c in $commits; do picks="$picks $c:*"; done
    else
        # Comma-separated commits (every set in their tree) or set names (selfplay-20: that set
        # alone, from the commit that added its manifest, which may hold other sets too).
        picks=""
        for g in ${games//,/ }; do
            if git rev-parse -q --verify "$g^{commit}" >/dev/null 2>&1; then
                picks="$picks $g:*"
            else
                c=$(git log --diff-filter=A --format=%H -- "datasets/$g/manifest.json")
                [ -n "$c" ] || { echo "--games $g: neither a commit nor a set in the history (datasets/README.md)" >&2; exit 1; }
                picks="$picks $c:datasets/$g"
            fi
        done
    fi
    for pick in $picks; do
        c=${pick%%:*} only=${pick#*:}
        for set in $(git ls-tree --name-only "$c" datasets/ | grep -v '\.md$' | grep -v '^datasets/packed$'); do
            [ "$only" = "*" ] || [ "$set" = "$only" ] || continue
            if [ "$pack" = 1 ]; then
                # A packed copy kept in the history (datasets/packed/NAME.mcg, datasets/README.md)
                # saves packing again (about 2 minutes per 35,000 games on 2 cores).
                pc=$(git log -1 --diff-filter=A --format=%H -- "datasets/packed/${set#datasets/}.mcg")  # the newest copy
                if [ -n "$pc" ]; then
                    mkdir -p .gpu2/datasets
                    git show "$pc:datasets/packed/${set#datasets/}.mcg" > ".gpu2/$set.mcg"
                    echo "packed: .gpu2/$set.mcg ($(du -h ".gpu2/$set.mcg" | cut -f1)), kept in $(git log -1 --format=%h "$pc")"
                    version=$("$py" -c "from training.packgames import packed_header as h; print(h('.gpu2/$set.mcg')['version'])")
                    if [ "$repack" = 1 ] && [ "$version" != 2 ]; then
                        "$py" -m training dataset pack-games ".gpu2/$set.mcg" --out ".gpu2/$set.v2.mcg" \
                            --workers "$(nproc)" --version 2 >/dev/null
                        mv ".gpu2/$set.v2.mcg" ".gpu2/$set.mcg"
                        echo "repacked: .gpu2/$set.mcg as version 2 ($(du -h ".gpu2/$set.mcg" | cut -f1))"
                    fi
                    continue
                fi
            fi
            git archive "$c" "$set" | tar -x -C .gpu2
            echo "games: $set from $(git log -1 --format='%h %s' "$c" | cut -c1-72)"
            if [ "$pack" = 1 ]; then
                "$py" -m training dataset pack-games ".gpu2/$set" --out ".gpu2/$set.mcg" --workers "$(nproc)" >/dev/null
                rm -rf ".gpu2/$set"
                echo "packed: .gpu2/$set.mcg ($(du -h ".gpu2/$set.mcg" | cut -f1))"
            fi
        done
    done
elif [ "$pack" = 1 ]; then
    echo "--pack packs the sets of --games: name them" >&2; exit 2
fi
rm -rf .gpu[3-9] .gpu[1-9][0-9]
if [ "$split" -gt 0 ] && { [ -d .gpu2/datasets ] || ls .gpu2/stockfish.xz.part-* >/dev/null 2>&1; }; then
    # First fit, largest first: .gpu2 keeps what it holds besides the sets and the Stockfish
    # parts (site/, ...); a set goes to .gpuK/datasets/, a Stockfish part to .gpuK/.
    limit=$((split * 1000000))
    used2=$(du -cb .gpu2 --exclude=datasets --exclude='stockfish.xz.part-*' | tail -1 | cut -f1)
    declare -A used=([2]=$used2)
    for f in $(ls -S .gpu2/datasets/* .gpu2/stockfish.xz.part-* 2>/dev/null); do
        size=$(stat -c %s "$f")
        [ "$size" -le "$limit" ] || { echo "--split $split: $f alone is larger" >&2; exit 1; }
        k=2
        while [ $((${used[$k]:-0} + size)) -gt "$limit" ]; do k=$((k + 1)); done
        used[$k]=$((${used[$k]:-0} + size))
        if [ "$k" != 2 ]; then
            dest=".gpu$k/${f#.gpu2/}"
            mkdir -p "$(dirname "$dest")"
            mv "$f" "$dest"
        fi
    done
fi
source scripts/tree_size.sh
tree=$(travelling_tree_bytes)  # what travels besides the folder (tracked files may have been taken out)
over=0
for d in .gpu[2-9] .gpu[1-9][0-9]; do
    [ -d "$d" ] || continue
    for e in "$d"/* "$d"/datasets/*; do
        [ -e "$e" ] && [ "$e" != "$d/datasets" ] && du -sh "$e"
    done
    echo "$d: $(du -sh "$d" | cut -f1) to carry (+ the working tree, $tree bytes)"
    # A device call carries 64 MiB in all: the tracked tree (and untracked files git does not ignore) plus the folder.
    total=$(($(du -sb "$d" | cut -f1) + tree))
    if [ "$total" -gt $((64 * 1024 * 1024)) ]; then
        echo "WARNING: $d with the working tree is $total bytes, over the 64 MiB (67108864) a call carries: use a smaller --split" >&2
        over=1
    fi
done
[ "$over" = 0 ] || exit 1
