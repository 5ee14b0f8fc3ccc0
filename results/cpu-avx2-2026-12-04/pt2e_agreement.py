"""One-off check for issue 17 (kept as the exact code behind pt2e_agreement.txt; needs torchao on PYTHONPATH).

All-int8 EfficientNet-B0 by FX (greenstudy.variants.int8_recipe.quantize_fx) and by torchao's PT2E
(X86InductorQuantizer defaults), against fp32, on a model trained briefly (argv[1] epochs, default 3, on
10,000 real CIFAR-100 images): validation top-1 and top-1 agreement with fp32 on 2,000 held-out images.
argv[2] = "reduce_range" quantizes PT2E's activations to 7 bits (the quantizer's default is 8).
"""

import sys
import time

import torch
import torch._inductor.config
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)

from greenstudy.training.data import Normalizer, eval_batches, load_cifar, train_batches
from greenstudy.training.models import build_model
from greenstudy.variants.int8_recipe import quantize_fx, vnni_available

CPU = torch.device("cpu")


def train(data, epochs: int) -> torch.nn.Module:
    """EfficientNet-B0, fp32, channels_last, SGD with Nesterov momentum, batch 128."""
    normalise = Normalizer(data.mean, data.std, CPU, channels_last=True)
    model = build_model("efficientnet_b0", 100).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for images, labels in train_batches(data.train, 128, generator):
            loss = torch.nn.functional.cross_entropy(model(normalise(images)), labels.long())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    return model.eval()


def predictions(data, model, channels_last: bool = True) -> torch.Tensor:
    normalise = Normalizer(data.mean, data.std, CPU, channels_last=channels_last)
    with torch.no_grad():
        return torch.cat([model(normalise(images)).argmax(1) for images, _ in eval_batches(data.val, 250)])


def main() -> None:
    torch.manual_seed(0)
    data = load_cifar("cifar100", "/work/shared/data", download=False, val_size=2000, train_subset=10000)
    model = train(data, int(sys.argv[1]) if len(sys.argv) > 1 else 3)
    nchw = Normalizer(data.mean, data.std, CPU, channels_last=False)
    calibration = [nchw(images) for images, _ in eval_batches(data.train, 250)][:4]
    found = {"fp32": predictions(data, model)}
    found["int8 FX (all blocks)"] = predictions(
        data, quantize_fx(model, calibration, reduce_range=not vnni_available()), channels_last=False)
    quantizer = X86InductorQuantizer()
    reduce_range = len(sys.argv) > 2 and sys.argv[2] == "reduce_range"
    quantizer.set_global(get_default_x86_inductor_quantization_config(reduce_range=reduce_range))
    print(f"PT2E reduce_range={reduce_range}")
    channels_last = [batch.contiguous(memory_format=torch.channels_last) for batch in calibration]
    with torch.no_grad():
        # export fixes the batch at 250: every validation batch is 250 (2,000 images)
        prepared = prepare_pt2e(torch.export.export(model, (channels_last[0],)).module(), quantizer)
        for batch in channels_last:
            prepared(batch)
        converted = convert_pt2e(prepared)
        with torch._inductor.config.patch(freezing=True):
            found["int8 PT2E compiled+frozen"] = predictions(data, torch.compile(converted))
        found["int8 PT2E reference graph"] = predictions(data, converted)  # Q/DQ graph, uncompiled
    labels = data.val.labels.long()
    for name, predicted in found.items():
        accuracy = (predicted == labels).float().mean().item() * 100
        agreement = (predicted == found["fp32"]).float().mean().item() * 100
        print(f"{name:<28} val top-1 {accuracy:6.2f} %   agrees with fp32 on {agreement:6.2f} % of {len(labels)} images")
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, vnni {vnni_available()}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
