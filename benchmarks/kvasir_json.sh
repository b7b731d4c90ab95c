# Sourced by the benchmark scripts: Kvasir-SEG as COCO json split by its official train.txt / test.txt, made once
# (data/kvasir/{all,train,test}.json). Needs PY and FPSIAM_KVASIR.
kvasir_json() {
  : "${FPSIAM_KVASIR:?set FPSIAM_KVASIR to the Kvasir-SEG folder (or TRAIN to a labeled COCO json)}"
  if [ ! -f data/kvasir/test.json ]; then
    mkdir -p data/kvasir
    "$PY" -m fpsiam data convert --format kvasir "$FPSIAM_KVASIR" -o data/kvasir/all.json
    "$PY" -m fpsiam data split data/kvasir/all.json --by list --list train="$FPSIAM_KVASIR/train.txt" \
        --list test="$FPSIAM_KVASIR/test.txt" -o data/kvasir
  fi
}
