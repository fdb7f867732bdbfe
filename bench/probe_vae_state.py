import torch, json
from stream_r1.vae import StreamingDecoder, VAEConfig, WanVAE
torch.backends.cudnn.benchmark = True
torch.manual_seed(0)
vae = WanVAE(VAEConfig.wan21()).to("cuda", torch.bfloat16).eval()
for m in vae.modules():
    if isinstance(m, torch.nn.Conv3d): m.to(memory_format=torch.channels_last_3d)
for compiled in (False, True):
    if compiled: vae.decoder.compile()
    dec = StreamingDecoder(vae)
    lat = torch.randn(1, 16, 3, 60, 104, device="cuda")
    with torch.no_grad():
        for c in range(2):
            before = torch.cuda.memory_allocated()
            dec.decode(lat); torch.cuda.synchronize()
            rows = [(i, tuple(t.shape), t.stride(), t.numel()*t.element_size()//2**20, t.untyped_storage().nbytes()//2**20)
                    for i, t in enumerate(dec.cache) if t is not None]
            big = [r for r in rows if r[4] > r[3] * 1.05]
            print("compiled", compiled, "chunk", c, "logical MiB", sum(r[3] for r in rows), "storage MiB",
                  sum(r[4] for r in rows), "alloc delta MiB", (torch.cuda.memory_allocated()-before)//2**20)
            for r in big[:6]: print("   ", r)
