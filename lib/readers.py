"""Reading image and mask files, without torch: only the formats a dermoscopic image or mask comes in are decoded
(never EPS, PDF or another of PIL's many decoders, some of which run outside programs), camera EXIF orientation
applied, any bit depth brought to 8-bit RGB."""
import numpy as np
from PIL import Image, ImageOps

from lib.errors import DataError

# Decoders PIL may use, by PIL's format names: a file whose bytes are of any other format is refused, whatever
# its name says (an animated GIF: its first frame).
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "GIF", "WEBP")  # JPEG includes the MPO files of some cameras
MASK_FORMATS = ("PNG", "BMP", "GIF", "TIFF")
ORIENTATION = 0x0112  # the EXIF tag
MAX_PIXELS = 100_000_000  # larger images are refused before decoding, here and on the page (web/segment.js)
Image.MAX_IMAGE_PIXELS = None  # PIL's own limit warns between 89 and 179 megapixels: open_image's replaces it


def open_image(source, formats=IMAGE_FORMATS):
    """Image.open() of a path or file object, limited to `formats` and to MAX_PIXELS, both read from the header
    before anything is decoded: DataError otherwise."""
    try:
        im = Image.open(source, formats=formats)
    except Image.UnidentifiedImageError:
        raise DataError(f"not an image of a format read here ({', '.join(formats)})") from None
    if im.size[0] * im.size[1] > MAX_PIXELS:
        im.close()
        raise DataError(too_large(im.size))
    return im


def too_large(size):
    """The refusal of an image over MAX_PIXELS, in the page's words too (web/segment.js's tooLarge)."""
    return f"the image is {size[0]}x{size[1]}, over {MAX_PIXELS / 1e6:g} megapixels, the largest read here"


def to_8bit_rgb(im):
    """An RGB image from any PIL mode. 16-bit and 32-bit integer and float greyscale images are scaled to 0..255
    (PIL's own convert() clips them, which turns a 16-bit image white)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 1.0 if im.mode == "F" and arr.max() <= 1 else 255.0 if arr.max() <= 255 else 65535.0
        im = Image.fromarray((arr.clip(0, top) * (255 / top)).round().astype(np.uint8))
    return im.convert("RGB")


def displayed_size(source):
    """(width, height) of an image as every viewer shows it (EXIF orientation applied), from its header alone."""
    with open_image(source) as im:
        return shown_size(im)


def shown_size(im):
    """(width, height) of an opened image once its EXIF orientation is applied (5-8: turned by 90 degrees)."""
    return im.size[::-1] if im.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8) else im.size


def decodes_whole(path, size):
    """Whether the image file at path decodes completely at `size` (width, height): a mask or overlay written
    whole, not one cut short, emptied or of another image."""
    try:
        with open_image(path, ("PNG", "JPEG")) as im:
            im.load()  # raises for a file cut short
            return im.size == tuple(size)
    except Exception:  # PIL raises many types for broken files
        return False


def read_image(path, size, draft=True):
    """RGB uint8 array (size, size, 3) and the original (width, height) as displayed, from any image mode; a
    camera's EXIF orientation is applied, so masks line up with the image every viewer shows. With draft, JPEGs
    are decoded at a reduced scale: how training reads images. Without, the image is decoded whole and resized,
    exactly as model_input() resizes a photo: how every model that is scored or used sees it."""
    with open_image(path) as im:
        original_size = shown_size(im)
        if draft:
            im.draft("RGB", (size, size))  # JPEGs decode at 1/2..1/8 scale directly: far faster for big files
        return square_input(upright_rgb(im), size), original_size


def read_full_image(source):
    """RGB uint8 array (height, width, 3) at the image's own size, turned as its EXIF orientation says; source: a
    path or a file object."""
    with open_image(source) as im:
        return np.array(upright_rgb(im))


def read_photo(source, size):
    """(the photo as an RGB PIL image, its model input: uint8 [size,size,3]) from one decode: the pixels of
    read_full_image() and model_input(), without their copies (make predict's reading)."""
    with open_image(source) as im:
        photo = upright_rgb(im)
        return photo, square_input(photo, size)


def upright_rgb(im):
    """An opened image decoded, turned as its EXIF orientation says and brought to 8-bit RGB, copied only where
    one of those changes it."""
    im.load()  # before the EXIF: a PNG may store it after the pixels
    if im.getexif().get(ORIENTATION, 1) in range(2, 9):
        im = ImageOps.exif_transpose(im)
    return im if im.mode == "RGB" else to_8bit_rgb(im)


def as_photo(image):
    """RGB uint8 array [H,W,3] of a PIL image (EXIF orientation applied; the caller's image is left as it is) or a
    numpy array ([H,W,3] or [H,W] grey, uint8)."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.ndim == 3 and image.shape[2] not in (3, 4):
            raise DataError(f"an image array is uint8 [H,W,3] or [H,W] (grey); got {image.dtype} {image.shape}")
        return np.ascontiguousarray(np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3])
    return np.array(to_8bit_rgb(ImageOps.exif_transpose(image)))  # exif_transpose copies: the caller's image stays


def model_input(photo, size):
    """RGB uint8 array (size, size, 3) of a photo [H,W,3]: what prediction hands the model (read_image without
    draft gives the same from a file)."""
    return square_input(Image.fromarray(photo), size)


def square_input(im, size):
    """RGB uint8 array (size, size, 3) of an RGB PIL image: the one resize (bilinear, antialiased) by which every
    model, trained, scored or used, sees an image."""
    return np.asarray(im.resize((size, size), Image.BILINEAR))


def binarize_mask(arr):
    """Lesion = 1. Accepts {0,1}, {0,255}, 16-bit and lossy (JPEG-like) masks by thresholding at half the max."""
    arr = np.asarray(arr)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2)
    top = arr.max()
    return arr > 0 if top <= 1 else arr > top / 2


def read_binary_mask(path):
    """Boolean array (height, width) of a mask file at its own size. A palette image (PNG, GIF) is read by what it
    shows when its colours say which is the lesion (each index in use a colour of its own, all black or white:
    white is lesion), else by index, as segmentation data sets store classes (0 background, any other lesion)."""
    with open_image(path, MASK_FORMATS) as im:
        if im.mode in ("P", "PA"):
            index = np.asarray(im.getchannel(0) if im.mode == "PA" else im)
            white = black_and_white_palette(im, np.unique(index))
            return white[index] if white is not None else index > 0
        im = im.convert("L") if im.mode in ("LA", "1", "CMYK") else im
        return binarize_mask(np.asarray(im))


def black_and_white_palette(im, used):
    """Boolean [256]: whether each palette index shows white, when every index in `used` shows pure black or pure
    white and no two show the same; None otherwise (the colours then say nothing, and the index decides). Some
    public copies of HAM10000 store lesion as index 0 shown white, background as index 255 shown black."""
    palette = np.zeros((256, 3), np.int64)
    colours = np.asarray(im.getpalette("RGB") or [], np.int64).reshape(-1, 3)[:256]
    palette[:len(colours)] = colours
    shown = palette[used]
    grey = (shown == shown[:, :1]).all(1) & np.isin(shown[:, 0], (0, 255))
    if not grey.all() or len(np.unique(shown[:, 0])) != len(used):
        return None
    return palette[:, 0] == 255


def read_mask(path, size):
    """Binary uint8 array (size, size) of 0/1, resized so it stays aligned with its image, and the original (w, h)."""
    binary = read_binary_mask(path)
    small = Image.fromarray(binary.astype(np.uint8) * 255).resize((size, size), Image.BILINEAR)
    return (np.asarray(small) > 127).astype(np.uint8), (binary.shape[1], binary.shape[0])
