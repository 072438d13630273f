// Keyward's fscrypt binding: exactly the ioctls and xattr calls `keyward volume` needs, on a
// directory descriptor Node opened. Nothing else: no paths, no generic ioctl, no FFI.
// Errors are thrown as Error with `code` set to the errno name (EOPNOTSUPP, ENOKEY, ...).
// Key bytes are copied into one stack buffer for the ioctl and wiped with explicit_bzero.
#define _GNU_SOURCE
#include <errno.h>
#include <linux/fscrypt.h>
#include <node_api.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/xattr.h>

#define KEY_SIZE FSCRYPT_MAX_KEY_SIZE  // 64: what AES-256-XTS and v2 policies want
#define XATTR_PREFIX "user."
#define XATTR_VALUE_MAX 255

// Returns NULL from the calling function after throwing, when a N-API call fails.
#define CHECK(env, call)                                               \
  do {                                                                 \
    if ((call) != napi_ok) {                                           \
      throw_plain(env, "EINVAL", "fscrypt binding: bad arguments");    \
      return NULL;                                                     \
    }                                                                  \
  } while (0)

static void throw_plain(napi_env env, const char *code, const char *message) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) napi_throw_error(env, code, message);
}

// Throws Error(`<call>: <strerror>`) with code = errno name and errno = the number.
static void throw_errno(napi_env env, const char *call, int err) {
  const char *name = strerrorname_np(err);
  char message[160];
  snprintf(message, sizeof message, "%s: %s", call, strerror(err));
  napi_value code, text, error, number;
  if (napi_create_string_utf8(env, name ? name : "EUNKNOWN", NAPI_AUTO_LENGTH, &code) != napi_ok ||
      napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &text) != napi_ok ||
      napi_create_error(env, code, text, &error) != napi_ok || napi_create_int32(env, err, &number) != napi_ok) {
    throw_plain(env, name ? name : "EUNKNOWN", message);
    return;
  }
  napi_set_named_property(env, error, "errno", number);
  napi_value syscall;
  if (napi_create_string_utf8(env, call, NAPI_AUTO_LENGTH, &syscall) == napi_ok) napi_set_named_property(env, error, "syscall", syscall);
  napi_throw(env, error);
}

static bool get_args(napi_env env, napi_callback_info info, size_t expected, napi_value *argv) {
  size_t argc = expected;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < expected) {
    throw_plain(env, "EINVAL", "fscrypt binding: missing arguments");
    return false;
  }
  return true;
}

static bool get_fd(napi_env env, napi_value value, int *fd) {
  if (napi_get_value_int32(env, value, fd) != napi_ok || *fd < 0) {
    throw_plain(env, "EBADF", "fscrypt binding: the first argument must be a file descriptor");
    return false;
  }
  return true;
}

// A Buffer of exactly `size` bytes.
static bool get_bytes(napi_env env, napi_value value, size_t size, const char *what, uint8_t **data) {
  bool is_buffer = false;
  size_t length = 0;
  if (napi_is_buffer(env, value, &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, value, (void **)data, &length) != napi_ok || length != size) {
    char message[96];
    snprintf(message, sizeof message, "fscrypt binding: %s must be a Buffer of %zu bytes", what, size);
    throw_plain(env, "EINVAL", message);
    return false;
  }
  return true;
}

// (fd, identifier: Buffer(16)): the arguments of every call that names a key.
static bool get_fd_and_identifier(napi_env env, napi_callback_info info, int *fd, uint8_t **identifier) {
  napi_value argv[2];
  return get_args(env, info, 2, argv) && get_fd(env, argv[0], fd) &&
         get_bytes(env, argv[1], FSCRYPT_KEY_IDENTIFIER_SIZE, "the key identifier", identifier);
}

static napi_value copy_to_buffer(napi_env env, const uint8_t *data, size_t size) {
  napi_value buffer;
  void *copy;
  if (napi_create_buffer_copy(env, size, data, &copy, &buffer) != napi_ok) return NULL;
  return buffer;
}

static void identifier_spec(struct fscrypt_key_specifier *spec, const uint8_t *identifier) {
  memset(spec, 0, sizeof *spec);
  spec->type = FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER;
  memcpy(spec->u.identifier, identifier, FSCRYPT_KEY_IDENTIFIER_SIZE);
}

static int ioctl_retry(int fd, unsigned long request, void *arg) {
  int rc;
  do rc = ioctl(fd, request, arg);
  while (rc < 0 && errno == EINTR);
  return rc;
}

// addKey(fd, key: Buffer(64)) -> identifier: Buffer(16)
static napi_value add_key(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  uint8_t *key;
  if (!get_args(env, info, 2, argv) || !get_fd(env, argv[0], &fd) || !get_bytes(env, argv[1], KEY_SIZE, "the key", &key)) return NULL;
  // The argument struct ends in a flexible array: room for it and the key in one wipeable buffer.
  union {
    struct fscrypt_add_key_arg arg;
    uint8_t bytes[sizeof(struct fscrypt_add_key_arg) + KEY_SIZE];
  } request;
  memset(&request, 0, sizeof request);
  request.arg.key_spec.type = FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER;
  request.arg.raw_size = KEY_SIZE;
  memcpy(request.arg.raw, key, KEY_SIZE);
  int rc = ioctl_retry(fd, FS_IOC_ADD_ENCRYPTION_KEY, &request.arg);
  int err = errno;
  uint8_t identifier[FSCRYPT_KEY_IDENTIFIER_SIZE];
  memcpy(identifier, request.arg.key_spec.u.identifier, sizeof identifier);
  explicit_bzero(&request, sizeof request);
  if (rc < 0) {
    throw_errno(env, "FS_IOC_ADD_ENCRYPTION_KEY", err);
    return NULL;
  }
  return copy_to_buffer(env, identifier, sizeof identifier);
}

// removeKey(fd, identifier) -> { removed, filesBusy, otherUsers }
static napi_value remove_key(napi_env env, napi_callback_info info) {
  int fd;
  uint8_t *identifier;
  if (!get_fd_and_identifier(env, info, &fd, &identifier)) return NULL;
  struct fscrypt_remove_key_arg arg;
  memset(&arg, 0, sizeof arg);
  identifier_spec(&arg.key_spec, identifier);
  if (ioctl_retry(fd, FS_IOC_REMOVE_ENCRYPTION_KEY, &arg) < 0) {
    throw_errno(env, "FS_IOC_REMOVE_ENCRYPTION_KEY", errno);
    return NULL;
  }
  bool files_busy = arg.removal_status_flags & FSCRYPT_KEY_REMOVAL_STATUS_FLAG_FILES_BUSY;
  bool other_users = arg.removal_status_flags & FSCRYPT_KEY_REMOVAL_STATUS_FLAG_OTHER_USERS;
  napi_value result, removed, busy, others;
  CHECK(env, napi_create_object(env, &result));
  // Removed: the key is gone from the filesystem (no other user's claim, no file still open).
  CHECK(env, napi_get_boolean(env, !files_busy && !other_users, &removed));
  CHECK(env, napi_get_boolean(env, files_busy, &busy));
  CHECK(env, napi_get_boolean(env, other_users, &others));
  CHECK(env, napi_set_named_property(env, result, "removed", removed));
  CHECK(env, napi_set_named_property(env, result, "filesBusy", busy));
  CHECK(env, napi_set_named_property(env, result, "otherUsers", others));
  return result;
}

// keyStatus(fd, identifier) -> { status: 'absent'|'present'|'incompletelyRemoved', userCount, addedBySelf }
static napi_value key_status(napi_env env, napi_callback_info info) {
  int fd;
  uint8_t *identifier;
  if (!get_fd_and_identifier(env, info, &fd, &identifier)) return NULL;
  struct fscrypt_get_key_status_arg arg;
  memset(&arg, 0, sizeof arg);
  identifier_spec(&arg.key_spec, identifier);
  if (ioctl_retry(fd, FS_IOC_GET_ENCRYPTION_KEY_STATUS, &arg) < 0) {
    throw_errno(env, "FS_IOC_GET_ENCRYPTION_KEY_STATUS", errno);
    return NULL;
  }
  const char *status = arg.status == FSCRYPT_KEY_STATUS_PRESENT                 ? "present"
                       : arg.status == FSCRYPT_KEY_STATUS_INCOMPLETELY_REMOVED ? "incompletelyRemoved"
                                                                               : "absent";
  napi_value result, status_value, users, self;
  CHECK(env, napi_create_object(env, &result));
  CHECK(env, napi_create_string_utf8(env, status, NAPI_AUTO_LENGTH, &status_value));
  CHECK(env, napi_create_uint32(env, arg.user_count, &users));
  CHECK(env, napi_get_boolean(env, arg.status_flags & FSCRYPT_KEY_STATUS_FLAG_ADDED_BY_SELF, &self));
  CHECK(env, napi_set_named_property(env, result, "status", status_value));
  CHECK(env, napi_set_named_property(env, result, "userCount", users));
  CHECK(env, napi_set_named_property(env, result, "addedBySelf", self));
  return result;
}

static bool set_uint32(napi_env env, napi_value object, const char *name, uint32_t value) {
  napi_value v;
  return napi_create_uint32(env, value, &v) == napi_ok && napi_set_named_property(env, object, name, v) == napi_ok;
}

// getPolicy(fd) -> { version, contentsMode, filenamesMode, flags, identifier } | undefined (not encrypted).
// version is 1 or 2; for a v1 policy, identifier is its 8-byte descriptor.
static napi_value get_policy(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, argv) || !get_fd(env, argv[0], &fd)) return NULL;
  struct fscrypt_get_policy_ex_arg arg;
  memset(&arg, 0, sizeof arg);
  arg.policy_size = sizeof arg.policy;
  if (ioctl_retry(fd, FS_IOC_GET_ENCRYPTION_POLICY_EX, &arg) < 0) {
    if (errno == ENODATA) {
      napi_value undefined;
      CHECK(env, napi_get_undefined(env, &undefined));
      return undefined;
    }
    throw_errno(env, "FS_IOC_GET_ENCRYPTION_POLICY_EX", errno);
    return NULL;
  }
  napi_value result, identifier;
  CHECK(env, napi_create_object(env, &result));
  if (arg.policy.version == FSCRYPT_POLICY_V2) {
    const struct fscrypt_policy_v2 *p = &arg.policy.v2;
    if (!set_uint32(env, result, "version", 2) || !set_uint32(env, result, "contentsMode", p->contents_encryption_mode) ||
        !set_uint32(env, result, "filenamesMode", p->filenames_encryption_mode) || !set_uint32(env, result, "flags", p->flags))
      return NULL;
    identifier = copy_to_buffer(env, p->master_key_identifier, FSCRYPT_KEY_IDENTIFIER_SIZE);
  } else {
    const struct fscrypt_policy_v1 *p = &arg.policy.v1;
    if (!set_uint32(env, result, "version", 1) || !set_uint32(env, result, "contentsMode", p->contents_encryption_mode) ||
        !set_uint32(env, result, "filenamesMode", p->filenames_encryption_mode) || !set_uint32(env, result, "flags", p->flags))
      return NULL;
    identifier = copy_to_buffer(env, p->master_key_descriptor, FSCRYPT_KEY_DESCRIPTOR_SIZE);
  }
  if (identifier == NULL) return NULL;
  CHECK(env, napi_set_named_property(env, result, "identifier", identifier));
  return result;
}

// setPolicy(fd, identifier): v2, AES-256-XTS contents, AES-256-CTS names, names padded to 32 bytes
// (hides name lengths best among the padding choices, at a few bytes per name).
static napi_value set_policy(napi_env env, napi_callback_info info) {
  int fd;
  uint8_t *identifier;
  if (!get_fd_and_identifier(env, info, &fd, &identifier)) return NULL;
  struct fscrypt_policy_v2 policy;
  memset(&policy, 0, sizeof policy);
  policy.version = FSCRYPT_POLICY_V2;
  policy.contents_encryption_mode = FSCRYPT_MODE_AES_256_XTS;
  policy.filenames_encryption_mode = FSCRYPT_MODE_AES_256_CTS;
  policy.flags = FSCRYPT_POLICY_FLAGS_PAD_32;
  memcpy(policy.master_key_identifier, identifier, FSCRYPT_KEY_IDENTIFIER_SIZE);
  if (ioctl_retry(fd, FS_IOC_SET_ENCRYPTION_POLICY, &policy) < 0) {
    throw_errno(env, "FS_IOC_SET_ENCRYPTION_POLICY", errno);
    return NULL;
  }
  return NULL;
}

// Only `user.` attributes: Keyward records facts about a directory, never anything privileged.
static bool get_xattr_name(napi_env env, napi_value value, char *name, size_t size) {
  size_t length = 0;
  if (napi_get_value_string_utf8(env, value, name, size, &length) != napi_ok || length == 0 || length >= size - 1 ||
      strncmp(name, XATTR_PREFIX, strlen(XATTR_PREFIX)) != 0 || length == strlen(XATTR_PREFIX)) {
    throw_plain(env, "EINVAL", "fscrypt binding: the attribute name must start with 'user.' and be under 255 bytes");
    return false;
  }
  return true;
}

// getXattr(fd, name) -> string | undefined (no such attribute)
static napi_value get_xattr(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  char name[256];
  if (!get_args(env, info, 2, argv) || !get_fd(env, argv[0], &fd) || !get_xattr_name(env, argv[1], name, sizeof name)) return NULL;
  char value[XATTR_VALUE_MAX];
  ssize_t length = fgetxattr(fd, name, value, sizeof value);
  if (length < 0) {
    if (errno == ENODATA) {
      napi_value undefined;
      CHECK(env, napi_get_undefined(env, &undefined));
      return undefined;
    }
    throw_errno(env, "fgetxattr", errno);
    return NULL;
  }
  napi_value result;
  CHECK(env, napi_create_string_utf8(env, value, (size_t)length, &result));
  return result;
}

// setXattr(fd, name, value: string of at most 255 bytes)
static napi_value set_xattr(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd;
  char name[256];
  if (!get_args(env, info, 3, argv) || !get_fd(env, argv[0], &fd) || !get_xattr_name(env, argv[1], name, sizeof name)) return NULL;
  char value[XATTR_VALUE_MAX + 2];
  size_t length = 0;
  if (napi_get_value_string_utf8(env, argv[2], value, sizeof value, &length) != napi_ok || length > XATTR_VALUE_MAX) {
    throw_plain(env, "EINVAL", "fscrypt binding: the attribute value must be a string of at most 255 bytes");
    return NULL;
  }
  if (fsetxattr(fd, name, value, length, 0) < 0) throw_errno(env, "fsetxattr", errno);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  const napi_property_descriptor functions[] = {
      {"addKey", NULL, add_key, NULL, NULL, NULL, napi_enumerable, NULL},
      {"removeKey", NULL, remove_key, NULL, NULL, NULL, napi_enumerable, NULL},
      {"keyStatus", NULL, key_status, NULL, NULL, NULL, napi_enumerable, NULL},
      {"getPolicy", NULL, get_policy, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setPolicy", NULL, set_policy, NULL, NULL, NULL, napi_enumerable, NULL},
      {"getXattr", NULL, get_xattr, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setXattr", NULL, set_xattr, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof functions / sizeof functions[0], functions) != napi_ok) return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
