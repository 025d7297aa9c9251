"""Upload an exported folder to the Hugging Face Hub (`export --push-to-hub REPO`).

`huggingface_hub` (a transformers dependency) does the work and is imported only here.
`check_can_push` runs before anything is exported, so a missing token or a malformed
repository name costs nothing; a failed upload leaves the exported folder in place and
says how to retry.
"""

from __future__ import annotations

from pathlib import Path

from utils.errors import UserError

TOKEN_FIX = "run `hf auth login` or set HF_TOKEN"


def check_can_push(repo_id: str) -> None:
    """Refuse, before any work, a repository name the Hub rejects or a missing token."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise UserError(f"{repo_id!r} is not a Hugging Face repository name ({_first_line(error)}); "
                        "use NAME or USER/NAME, e.g. my-user/gpt2-shakespeare") from None
    if not get_token():
        raise UserError("uploading to the Hugging Face Hub needs a token with write access; "
                        f"{TOKEN_FIX}. Nothing was exported")


def push_folder(folder: str | Path, repo_id: str, private: bool | None = None) -> str:
    """Create `repo_id` (if new) and upload `folder` to it; returns the repository's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                          commit_message="Upload a GPT-2 model exported by colab-gpt2")
    except Exception as error:  # network, token, permissions, offline mode: all "not uploaded"
        raise UserError(
            f"could not upload {folder} to the Hugging Face Hub repository {repo_id!r} "
            f"({type(error).__name__}: {_first_line(error)}); the exported folder is kept. "
            f"Fix: check the network and the token ({TOKEN_FIX}), then upload it with "
            f"`hf upload {repo_id} {folder}`") from error
    return str(url)


def _first_line(error: BaseException, limit: int = 200) -> str:
    text = (str(error).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[:limit] + "..."
