"""The linear-probe task: its data, its program and nothing else (the trainer, planner and CLI are generic)."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vqax.data import pipeline
from vqax.train.task import DataInfo, Program, Task, TrainData


class LinearProbeTask(Task):
  name = "linear_probe"
  flag_aliases = {"num_points": "num_points"}

  def prepare_data(self, workdir, batch):
    c = self.config
    rng = np.random.default_rng(int(c.seed))
    labels = rng.integers(0, int(c.model.num_classes), int(c.num_points))
    centres = rng.normal(size=(int(c.model.num_classes), int(c.features))) * 3
    points = centres[labels] + rng.normal(size=(len(labels), int(c.features)))
    records = [{"x": x.astype(np.float32), "label": np.int32(y)} for x, y in zip(points, labels)]
    loader = pipeline.make_loader(records, [], batch_size=batch.per_process, seed=int(c.seed))
    info = DataInfo(steps_per_epoch=len(records) // batch.global_batch, num_classes=int(c.model.num_classes))
    return TrainData(loader, info, samples_per_step=batch.global_batch)

  def build(self, info: DataInfo, platform: str):
    return LinearProbe(self.config, nn.Dense(int(self.config.model.num_classes)))


@dataclasses.dataclass(frozen=True, eq=False)
class LinearProbe(Program):
  config: object
  model: nn.Module

  def batch_spec(self, global_batch):
    return {"x": jax.ShapeDtypeStruct((global_batch, int(self.config.features)), jnp.float32),
            "label": jax.ShapeDtypeStruct((global_batch,), jnp.int32)}

  def init_variables(self, rng, batch_spec):
    return dict(self.model.init(rng, jnp.zeros((1, int(self.config.features)))))

  def loss_fn(self, params, model_state, batch, rng, step, phase):
    logits = self.model.apply({"params": params}, batch["x"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, (model_state, {"accuracy": accuracy})
