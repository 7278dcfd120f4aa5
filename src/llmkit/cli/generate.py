"""`llmkit generate` and `llmkit chat`: text from a model, streamed as it comes."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from llmkit.cli.common import Ctx, console, err_console, read_stdin_text, valid_text
from llmkit.cli.options import configured
from llmkit.errors import UserError

# how a streamed answer ended, in words (the stats line said a bare "length" or "stop")
_ENDED = {"length": "stopped at --max-new-tokens", "stop": "ended by the model or a stop string"}
MODEL_ARG = Annotated[str, typer.Argument(help="Causal LM: registered name (name, name:vN, id or alias), a built-in (smollm2-135m), "
                                               "a model folder or a Hugging Face Hub id.")]


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: llmkit generate shakespeare-nano --prompt 'ROMEO:' --max-new-tokens 200 --seed 1")(generate)
    app.command(epilog="Example: llmkit chat my-sft-model")(chat)


def _sampling(cfg) -> dict:
    for n, stop in enumerate(cfg.stop or []):
        valid_text(stop, f"--stop #{n + 1}")
    return dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                repetition_penalty=cfg.repetition_penalty, stop=cfg.stop or None, seed=cfg.seed)


@configured("generate", repeat=("stop",))
def generate(
    ctx: Ctx, cfg,
    model: MODEL_ARG,
    prompt: Annotated[str | None, typer.Option(help="Text to continue (default: read from stdin when it is piped).")] = None,
    no_stream: Annotated[bool, typer.Option("--no-stream", help="Print only when done.")] = False,
) -> None:
    """Continue a prompt with a causal language model."""
    from llmkit.generate import generate as run_generate

    if prompt is None:
        if sys.stdin.isatty():
            raise UserError("no prompt: pass --prompt TEXT (or pipe text on stdin)")
        prompt = read_stdin_text("the prompt on stdin")
    valid_text(prompt, "--prompt")
    params = _sampling(cfg)
    lm, tok = _load(model, ctx, "generate")
    _warn_unknown(tok, prompt, "the prompt")
    stream = not (no_stream or ctx.json)
    if stream:
        console.print(prompt, end="", style="bold", markup=False, highlight=False)
    out = run_generate(lm, tok, prompt, on_text=(lambda s: print(s, end="", flush=True)) if stream else None, **params)
    if stream:
        print()
    result = {"model": model, "prompt": prompt, "text": out.text, "finish_reason": out.finish_reason,
              "prompt_tokens": out.prompt_tokens, "completion_tokens": len(out.token_ids),
              "seconds": round(out.seconds, 4), "tokens_per_s": round(len(out.token_ids) / max(out.seconds, 1e-9), 1),
              # the first token's wait (prompt, the decoder's set-up) apart from the rate of the rest
              "first_token_seconds": round(out.first_token_seconds, 4),
              "decode_tokens_per_s": round((len(out.token_ids) - 1) / max(out.seconds - out.first_token_seconds, 1e-9), 1)
              if len(out.token_ids) > 1 else None}
    if ctx.json:
        ctx.emit(result)
    elif not stream:
        console.print(prompt + out.text, markup=False, highlight=False)
    else:
        rate = f", then {result['decode_tokens_per_s']:,.1f} tok/s" if result["decode_tokens_per_s"] else ""
        console.print(f"[dim]{len(out.token_ids)} tokens in {out.seconds:.2f} s (first after {out.first_token_seconds:.2f} s"
                      f"{rate}), {_ENDED.get(out.finish_reason, out.finish_reason)}[/dim]")


def _warn_unknown(tok, text: str, where: str) -> None:
    """One line when the model's vocabulary lacks some of `text` (a character-level model reads those as <|unk|>)."""
    from rich.markup import escape

    from llmkit.generate import unknown_characters

    unknown = unknown_characters(tok, text)
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        err_console.print(f"[yellow]warning:[/yellow] {escape(where)} has {len(unknown)} character(s) this model's "
                          f"vocabulary lacks ({escape(shown)}); it reads each as {escape(str(tok.unk_token))}. "
                          "Write them as characters of its training text", highlight=False)


def _load(ref: str, ctx: Ctx, verb: str):
    """(what generates, tokenizer): a GGUF or ONNX export on its own runtime (llama.cpp, onnxruntime), as serve,
    eval and bench-model run it (generate and chat refused one); anything else as the torch module."""
    from llmkit.models.io import load_causal_lm, load_tokenizer_for, resolve_model
    from llmkit.models.kind import require_causal
    from llmkit.runtime.backends import choose_backend, load_backend

    model = resolve_model(ref, ctx.registry)
    require_causal(model, verb)  # an encoder crashed with KeyError: 'cache'
    runtime = choose_backend(model)
    if runtime != "torch":
        return load_backend(runtime, model), load_tokenizer_for(model)
    return load_causal_lm(model)


# Commands a chat client's user types to leave (Ollama's /bye, a shell's exit): sent to the model they were answered.
ENDS_CHAT = ("/bye", "/exit", "/quit")


@configured("generate", repeat=("stop",))
def chat(
    ctx: Ctx, cfg,
    model: MODEL_ARG,
    system: Annotated[str | None, typer.Option(help="System message.")] = None,
) -> None:
    """Talk with a model in the terminal; uses its chat template when it has one. An empty line, /bye (/exit, /quit) or
    Ctrl-D ends; /clear starts the conversation again."""
    from llmkit.generate import chat_prompt
    from llmkit.generate import generate as run_generate

    params = _sampling(cfg)
    if system:
        valid_text(system, "--system")
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")  # a line that is not UTF-8 is refused below, not a crash
    lm, tok = _load(model, ctx, "chat")
    templated = bool(getattr(tok, "chat_template", None))
    messages = [{"role": "system", "content": system}] if system else []
    console.print(f"[dim]chatting with {model} ({'chat template' if templated else 'plain continuation'}); "
                  "an empty line, /bye or Ctrl-D ends; /clear forgets the conversation[/dim]")
    while True:
        try:
            line = input("you> ")
        except EOFError:
            break
        if not line.strip() or line.strip().lower() in ENDS_CHAT:
            break
        if line.strip().lower() == "/clear":  # as Ollama's: the system message stays
            messages = messages[:1] if system else []
            console.print("[dim]conversation cleared[/dim]")
            continue
        valid_text(line, f"line {sum(m['role'] == 'user' for m in messages) + 1} of the input")
        _warn_unknown(tok, line, "your line")
        messages.append({"role": "user", "content": line})
        prompt, end_ids = chat_prompt(tok, messages)
        print("model> ", end="", flush=True)
        out = run_generate(lm, tok, prompt, on_text=lambda s: print(s, end="", flush=True), stop_token_ids=end_ids,
                           **params)
        print()
        messages.append({"role": "assistant", "content": out.text.strip()})
    if ctx.json:
        ctx.emit({"messages": messages})
