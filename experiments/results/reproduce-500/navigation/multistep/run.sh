#!/bin/bash
cd /work/pmrl; export PYTHONPATH=/work/pmrl
for pol in theirs:/work/main/experiments/results/pytorch-maml-rl-test/navigation-maml/policy.th ours2:/tmp/pmrl-test/ours_seed2.th ours1:/tmp/pmrl-test/ours_seed1.th; do
  name=${pol%%:*}; path=${pol#*:}
  for s in 1 2 3; do
    /work/pmrl-venv/bin/python /tmp/pmrl-test/runner.py test.py --config /tmp/pmrl-test/config$s.json --policy $path --output /tmp/pmrl-test/${name}_$s.npz --num-batches 1 --meta-batch-size 40 --seed 1 --num-workers 1 > /tmp/pmrl-test/${name}_$s.log 2>&1
  done
done
echo ALLDONE
