# Keyward's own N-API addon (fscrypt ioctls for `keyward volume`): `npm run native:build`.
{
  "targets": [
    {
      "target_name": "fscrypt",
      "sources": ["fscrypt.c"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
