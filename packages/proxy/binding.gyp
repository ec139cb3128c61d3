{
  "targets": [
    {
      "target_name": "ambient_hbone",
      "sources": ["native/hbone.c"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE"],
      "cflags": ["-Wall", "-Wextra", "-Werror", "-O2"],
      "cflags_c": ["-std=gnu11"]
    }
  ]
}
