"""The role names of chat messages: every spelling seen in public exports, folded to the three a chat
template knows. Shared by the chat and preference formats."""

# Every role spelling seen in public chat exports, folded to the three roles a chat template knows.
ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "prompter": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
}


def roles_hint() -> str:
    """What a message with an unknown role is told: the roles, and the other spellings read as them."""
    others = ", ".join(k for k, v in ROLES.items() if k != v)
    return f"roles: system, user, assistant (also read as them: {others}); --skip-bad skips such records"
