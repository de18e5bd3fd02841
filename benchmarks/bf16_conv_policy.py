"""Experiment: AlexNet training step, all-bf16 autocast vs conv4/conv5 kept in fp32 (forward hooks),
interleaved in one process. Run: OMP_WAIT_POLICY=PASSIVE PYTHONPATH=src python benchmarks/bf16_conv_policy.py
"""
import torch, time, statistics
from torch import nn
from alexnet_lab.models import build_model
from alexnet_lab.engine.device import autocast
dev=torch.device('cpu')
def pre(mod, args):
    mod._prev_autocast = torch.is_autocast_enabled('cpu')
    torch.set_autocast_enabled('cpu', False)
    return tuple(a.float() for a in args)
def post(mod, args, out):
    torch.set_autocast_enabled('cpu', mod._prev_autocast)
def make(policy):
    m=build_model('alexnet').to(memory_format=torch.channels_last)
    if policy:
        for i in (8, 10):
            m[i].register_forward_pre_hook(pre); m[i].register_forward_hook(post)
    return m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, foreach=True)
x=torch.rand(128,1,224,224).contiguous(memory_format=torch.channels_last); y=torch.randint(0,10,(128,))
lf=nn.CrossEntropyLoss()
S={"bf16": make(False), "bf16+fp32conv45": make(True)}
print([type(S['bf16'][0][i]).__name__ for i in (8,10)], S['bf16'][0][8])
def step(m,o):
    with autocast('bf16',dev): loss=lf(m(x),y)
    o.zero_grad(); loss.backward(); o.step()
R={k:[] for k in S}
for k,(m,o) in S.items(): step(m,o)
for r in range(3):
    for k,(m,o) in S.items():
        t=time.perf_counter(); step(m,o); step(m,o); R[k].append(256/(time.perf_counter()-t))
for k,v in R.items(): print(k, round(statistics.median(v),1), [round(a,1) for a in v])
