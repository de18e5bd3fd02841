#!/usr/bin/env bash
# The recipe search behind docs/RECORDS.md ("How the rungs were found"): the candidates tried for
# each rung, in one process per rung, under the shared CPU lock with nothing else running:
#   flock /tmp/alexnet-lab-cpu.lock benchmarks/ladder_candidates.sh [RUNG...]
# RUNG is one of 883 883-ablation 883-muon 90 90-muon 90-ablation 92 92-muon muon-records 94 94-ablation 94-removal 95
# (default: 883 90 92). Each rung is
# one `alexnet-lab record --candidate ...` (a candidate is PRESET:key=value,... over the presets in
# engine/config.py, judged against its preset's target; the old presets are spelled out as overrides of
# today's): per-seed rows, a table of the candidates (mean/min test accuracy, share of seeds reaching
# the target, mean seconds per run), one JSON line per candidate; and the load average before each rung.
# Rows measured before --eval-every existed tested at every epoch end; accuracy does not depend on it,
# times a little. Rows logged before record took --candidate were printed by benchmarks/ladder_search.py
# (since removed: git show ff7af3d:benchmarks/ladder_search.py), which ran the same record loop.
set -euo pipefail
PY=${PYTHON:-python}
cd "$(dirname "$0")/.."
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
search() {  # search RUNG SEEDS CANDIDATES...
    echo "== rung $1 ($(date -u +%FT%TZ); load average: $(cut -d' ' -f1-3 /proc/loadavg))"
    local seeds=$2 candidates=()
    shift 2
    for candidate in "$@"; do candidates+=(--candidate "$candidate"); done
    $PY -m alexnet_lab record --seeds "$seeds" --json "${candidates[@]}"
}
for rung in ${*:-883 90 92}; do
    case $rung in
    883)  # the first speedrun recipe was 0.8 epoch at batch 256 with label smoothing 0.1; today's is 0.55
        search 883 5 \
            'speedrun:epochs=0.8,batch_size=256,label_smoothing=0.1' \
            'speedrun:epochs=0.7,batch_size=256,label_smoothing=0.1' \
            'speedrun:epochs=0.8,batch_size=256' \
            'speedrun:epochs=0.8,batch_size=128,lr=0.05,label_smoothing=0.1' \
            'speedrun:epochs=0.6,batch_size=256' \
            'speedrun:epochs=0.6,batch_size=128,lr=0.05' \
            'speedrun:epochs=0.6,lr=0.08' 'speedrun:epochs=0.6' 'speedrun:epochs=0.6,lr=0.12' \
            'speedrun:epochs=0.6,momentum=0.8' 'speedrun:epochs=0.6,warmup_frac=0.3' \
            'speedrun' 'speedrun:epochs=0.5' ;;
    883-ablation)  # airbench's style: A0-A4 add one trick at a time (A4 is the preset), B1-B4 on top
        search 883-ablation 5 \
            'speedrun:precision=fp32,channels_last=False,nesterov=False,schedule=constant,lr=0.05' \
            'speedrun:precision=fp32,channels_last=False,nesterov=False' \
            'speedrun:precision=fp32,channels_last=False' \
            'speedrun:channels_last=False' 'speedrun' \
            'speedrun:label_smoothing=0.1' 'speedrun:ema_decay=0.99' 'speedrun:tta=translate' \
            'speedrun:augment=True,tta=flip-translate' ;;
    90)
        search 90 5 \
            'speedrun-90:epochs=1' 'speedrun-90:epochs=1.25' 'speedrun-90' \
            'speedrun-90:label_smoothing=0' 'speedrun-90:batch_size=192' ;;
    92)
        search 92 2 \
            'speedrun-92:epochs=3,lr=0.1' 'speedrun-92:lr=0.1' 'speedrun-92' \
            'speedrun-92:model=speednet-wide,epochs=2,lr=0.1' 'speedrun-92:model=speednet-wide,epochs=2.5,lr=0.1' \
            'speedrun-92:model=speednet-wide,epochs=3,lr=0.1' \
            'speedrun-92:model=fmnist-net-s,epochs=1.5,lr=0.1' 'speedrun-92:model=fmnist-net-s,epochs=2,lr=0.1' ;;
    94)  # the first rows are the first recipes (label smoothing 0.1, tested at every epoch end): 10 epochs
         # with flips+translate and flip-translate TTA, then 8 epochs without; today's is 7 at 0.2, tested once
        search 94 1 'speedrun-94:epochs=6,label_smoothing=0.1,eval_every=1,augment=True,tta=flip-translate' \
            'speedrun-94:epochs=10,label_smoothing=0.1,eval_every=1,augment=True,tta=flip-translate' \
            'speedrun-94:epochs=8,label_smoothing=0.1,eval_every=1'
        search 94 2 'speedrun-94:label_smoothing=0.1,eval_every=1' \
            'speedrun-94:epochs=7.5,label_smoothing=0.1' 'speedrun-94:batch_size=128,lr=0.1,label_smoothing=0.1' \
            'speedrun-94' 'speedrun-94:lr=0.3,label_smoothing=0.1' 'speedrun-94:lr=0.3' \
            'speedrun-94:epochs=6.5,lr=0.3' 'speedrun-94:epochs=6.5' 'speedrun-94:label_smoothing=0.3' ;;
    94-ablation)  # airbench's style on today's recipe, seed 0: A0 plain momentum SGD at a constant lr, then
                  # one trick added per row (A5 is the preset); bf16 + channels-last throughout (94-removal: fp32)
        search 94-ablation 1 \
            'speedrun-94:nesterov=False,schedule=constant,lr=0.05,weight_decay=0,label_smoothing=0,eval_every=1' \
            'speedrun-94:nesterov=False,weight_decay=0,label_smoothing=0,eval_every=1' \
            'speedrun-94:weight_decay=0,label_smoothing=0,eval_every=1' \
            'speedrun-94:label_smoothing=0,eval_every=1' 'speedrun-94:eval_every=1' 'speedrun-94' ;;
    94-removal)  # one trick taken away at a time from the first recipe, seed 0 (2.5-7 min a row)
        search 94-removal 1 \
            'speedrun-94:epochs=10,label_smoothing=0.1,eval_every=1,augment=True' \
            'speedrun-94:epochs=10,label_smoothing=0.1,eval_every=1' \
            'speedrun-94:epochs=10,label_smoothing=0,eval_every=1,augment=True,tta=flip-translate' \
            'speedrun-94:epochs=10,label_smoothing=0.1,eval_every=1,augment=True,tta=flip-translate,precision=fp32,channels_last=False' ;;
    95)  # towards 95 %: the 94 % recipe trained longer, with augmentation and flip-translate TTA, seed 0
         # (speedrun-95 is speedrun-94 at 40 epochs with augment=True,tta=flip-translate)
        search 95 1 'speedrun-95' 'speedrun-95:model=fmnist-net,epochs=30' ;;
    90-muon)  # 2026-11-30, Muon and airbench's options on the 0.90 rung: Muon's lr, then one option at a
              # time over Muon at 1.1 epochs, then the BatchNorm-bias lr scale and Lookahead at 1 epoch
        search 90-muon 1 'speedrun-90' 'speedrun-90:optimizer=muon,muon_lr=0.02' \
            'speedrun-90:optimizer=muon,muon_lr=0.05' 'speedrun-90:optimizer=muon,muon_lr=0.1' \
            'speedrun-90:optimizer=muon,muon_lr=0.2,muon_momentum=0.6,muon_renorm=True' \
            'speedrun-90:optimizer=muon,muon_lr=0.1,muon_momentum=0.6,muon_renorm=True' \
            'speedrun-90:optimizer=muon,muon_lr=0.05,muon_renorm=True' 'speedrun-90:optimizer=muon,muon_lr=0.05,epochs=1'
        m='speedrun-90:optimizer=muon,muon_lr=0.05,epochs=1.1'
        search 90-muon 2 "$m" "$m,freeze_bn_weights=True,bn_bias_lr_scale=8" "$m,freeze_bn_weights=True" \
            "$m,init=dirac" "$m,bn_momentum=0.4" "$m,head_scale=0.3" "$m,lookahead_every=5,lookahead_alpha=0.5" \
            "$m,augment=altflip" "$m,label_smoothing=0.2"
        m='speedrun-90:optimizer=muon,freeze_bn_weights=True'
        search 90-muon 2 "$m,muon_lr=0.05,epochs=1.1,bn_bias_lr_scale=16" "$m,muon_lr=0.05,epochs=1.1,bn_bias_lr_scale=64" \
            "$m,muon_lr=0.05,epochs=1,bn_bias_lr_scale=8" "$m,muon_lr=0.05,epochs=1,bn_bias_lr_scale=8,lookahead_every=5" \
            "$m,muon_lr=0.05,epochs=1,bn_bias_lr_scale=8,lr=0.2" "$m,muon_lr=0.1,epochs=1,bn_bias_lr_scale=8" ;;
    883-muon)  # the 0.90 rung's Muon options on the 0.883 rung (speednet, batch 192)
        m='optimizer=muon,muon_lr=0.05,freeze_bn_weights=True,bn_bias_lr_scale=8,lookahead_every=5'
        search 883-muon 2 'speedrun' "speedrun:$m" "speedrun:$m,epochs=0.45" "speedrun:$m,epochs=0.4" ;;
    92-muon)  # Muon with the 0.90 rung's options (1 seed), then Muon alone (the 0.90 ablation's finding)
        m='optimizer=muon,muon_lr=0.05,freeze_bn_weights=True,bn_bias_lr_scale=8,lookahead_every=5'
        search 92-muon 1 "speedrun-92:$m,epochs=4" "speedrun-92:$m,epochs=3"
        search 92-muon 2 'speedrun-92:optimizer=muon,muon_lr=0.05,epochs=4' 'speedrun-92:optimizer=muon,muon_lr=0.05,epochs=4.5' ;;
    muon-records)  # 2026-11-30: each rung's preset as it was and with Muon (the ablation's one trick that pays),
                   # 5 seeds each, in one process per rung: the times of both on the same machine
        m='optimizer=muon,muon_lr=0.05'
        search 883 5 'speedrun' "speedrun:$m,epochs=0.45"
        search 90 5 'speedrun-90' "speedrun-90:$m,epochs=1.1"
        search 92 5 'speedrun-92' "speedrun-92:$m,epochs=4" ;;
    90-ablation)  # airbench's style at the 0.90 rung, 3 seeds a row, 1 epoch: the plain recipe (speedrun-90's
                  # SGD recipe cut to 1 epoch), each option added alone, then the final recipe and each of its
                  # options removed alone
        p='speedrun-90:epochs=1'
        m='optimizer=muon,muon_lr=0.05'
        b='freeze_bn_weights=True,bn_bias_lr_scale=8'
        l='lookahead_every=5'
        search 90-ablation 3 "$p" "$p,$m" "$p,$b" "$p,$l" "$p,init=dirac" "$p,bn_momentum=0.4" "$p,head_scale=0.3" \
            "$p,augment=altflip" "$p,$m,$b,$l" "$p,$b,$l" "$p,$m,$l" "$p,$m,$b" ;;
    *) echo "unknown rung $rung (one of 883 883-ablation 883-muon 90 90-muon 90-ablation 92 92-muon 94 94-ablation 94-removal 95)" >&2; exit 2 ;;
    esac
done
echo "== done ($(date -u +%FT%TZ); load average: $(cut -d' ' -f1-3 /proc/loadavg))"
