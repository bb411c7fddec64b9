set -e
R=/work/shared/data/rs8
P="data_root=$R,train_stage1.train.batch_size=8,train_stage2.train.batch_size=8,train_stage1.train.iterations=400,train_stage2.train.iterations=0"
cd /work/wt-after
PYTHONPATH=/work/wt-after/src /work/main/.venv/bin/kedro run --env rs8 --pipelines data_prep,train_stage1,train_stage2 --params "$P" > /tmp/rs8check_train.log 2>&1
rm -rf /work/wt-before/data && cp -r /work/wt-after/data /work/wt-before/data
for eng in torch onnxruntime; do
  for side in before after; do
    cd /work/wt-$side
    PYTHONPATH=/work/wt-$side/src /work/main/.venv/bin/kedro run --env rs8 --pipeline submit --params "data_root=$R,submit.engine=$eng" > /tmp/rs8check_${side}_$eng.log 2>&1
    cp data/08_reporting/submission_metrics.json /tmp/rs8check_${side}_$eng.json
    sha256sum data/07_model_output/submission.zip | cut -c1-16 > /tmp/rs8check_${side}_$eng.sha
  done
done
echo done > /tmp/rs8check.done
